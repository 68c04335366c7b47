"""Step previews for the progress bar: the real decoder when it is small, else TAESD, else a cheap
linear map.

- A small VAE (under `FULL_DECODE_PARAMETERS`, like the embedded model's) decodes the current latents
  in milliseconds, and its latent space is far from linear (a fitted linear map was off by ~60 levels
  on held-out scenes), so it is used as is (A1111's "Full" preview).
- A large VAE (SD's 84 M) with a TAESD decoder file for its family in the TAESD folders
  (`sfumato.models.taesd`) gets A1111's "TAESD" preview: full size, for a few milliseconds of compute.
  A missing or broken file is no error for a preview: it falls back to the next method.
- Otherwise "Approx cheap": a linear map from each latent pixel (plus a bias) to
  the colour of the patch it covers. Instead of shipping per-family coefficient tables, the map is
  fitted once per VAE by least squares on a few encoded reference images (shapes-world renders and
  colour ramps), so it fits any VAE a user loads; after that a preview is a matrix product.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sfumato.data.shapes import random_scene, render
from sfumato.errors import UserError
from sfumato.models.loader import LoadedModel
from sfumato.models.stored_weights import compute_dtype
from sfumato.models.taesd import TaesdDecoders
from sfumato.tasks.common import decode_latents, taesd_image

REFERENCE_SCENES = 12
FULL_DECODE_PARAMETERS = 5_000_000


def _reference_images(size: int) -> torch.Tensor:
    """Shapes-world scenes plus horizontal and vertical colour ramps, in [-1, 1], (N, 3, size, size)."""
    images = [
        np.asarray(render(random_scene(i, split="any"), size), dtype=np.float32)
        for i in range(REFERENCE_SCENES)
    ]
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for channel in range(3):
        horizontal = np.zeros((size, size, 3), np.float32)
        horizontal[..., channel] = ramp[None, :]
        horizontal[..., (channel + 1) % 3] = ramp[::-1][:, None]
        images.append(horizontal)
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return stacked / 127.5 - 1


@torch.no_grad()
def fit_latent_to_rgb(model: LoadedModel) -> torch.Tensor:
    """(latent_channels + 1, 3) matrix mapping a scaled latent pixel (and 1) to RGB in [-1, 1]."""
    factor = model.vae_scale_factor
    size = 8 * factor  # an 8×8 latent per reference image: enough rows for a 5-parameter fit per colour
    pixels = _reference_images(size)
    vae = model.vae
    dtype = compute_dtype(vae)
    encoded = vae.encode(pixels.to(model.device, dtype)).latent_dist.mean.float().cpu()
    latents = encoded * vae.config.scaling_factor
    targets = torch.nn.functional.avg_pool2d(pixels, factor)  # the colour each latent pixel covers
    rows = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    rows = torch.cat([rows, torch.ones(rows.shape[0], 1)], dim=1)
    solution = torch.linalg.lstsq(rows.double(), targets.permute(0, 2, 3, 1).reshape(-1, 3).double())
    return solution.solution.float()


class LatentPreviewer:
    """Previews for the loaded model, with TAESD decoders from `taesd` when given; the fitted map is
    kept per VAE object."""

    def __init__(self, taesd: TaesdDecoders | None = None) -> None:
        self.taesd = taesd
        self._vae_id: int | None = None
        self._matrix: torch.Tensor | None = None

    def __call__(self, model: LoadedModel, latents: torch.Tensor) -> Image.Image:
        """RGB preview of the first image of a batch of (scaled) latents: full size when decoded,
        latent size when approximated."""
        if sum(p.numel() for p in model.vae.decoder.parameters()) <= FULL_DECODE_PARAMETERS:
            with torch.no_grad():
                return decode_latents(model, latents[:1].detach())[0]
        try:
            decoder = self.taesd.get(model.family) if self.taesd is not None else None
        except UserError:
            decoder = None
        if decoder is not None:
            return taesd_image(decoder, latents.detach())
        return self.approximate(model, latents)

    def approximate(self, model: LoadedModel, latents: torch.Tensor) -> Image.Image:
        """The linear approximation, at latent resolution."""
        if self._matrix is None or self._vae_id != id(model.vae):
            self._matrix, self._vae_id = fit_latent_to_rgb(model), id(model.vae)
        first = latents[0].detach().float().cpu()
        rows = first.permute(1, 2, 0)
        rgb = torch.cat([rows, torch.ones(*rows.shape[:2], 1)], dim=2) @ self._matrix
        pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        return Image.fromarray(pixels)
