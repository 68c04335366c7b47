"""Step previews: the real decoder for small VAEs, a fitted linear map for large ones."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from sfumato.data.shapes import eval_prompts, render
from sfumato.eval.segment import background_colour
from sfumato.eval.shapes import nearest_colour
from sfumato.models.loader import load_checkpoint
from sfumato.models.registry import embedded_default_model
from sfumato.server.preview import LatentPreviewer
from sfumato.tasks.common import decode_latents


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def test_small_vae_previews_decode_the_latents():
    """The embedded model's VAE is small: a preview of an encoded held-out scene is its decoding."""
    model = load_checkpoint(embedded_default_model(), device=torch.device("cpu"), dtype=torch.float32)
    previewer = LatentPreviewer()
    for _, scene in eval_prompts(4, seed=11, two_objects=False):
        image = render(scene, 64)
        with torch.no_grad():
            latents = model.vae.encode(_pixels(image)).latent_dist.mean * model.vae.config.scaling_factor
        preview = previewer(model, latents)
        assert preview.size == (64, 64)
        assert np.array_equal(np.asarray(preview), np.asarray(decode_latents(model, latents)[0]))
        assert nearest_colour(background_colour(np.asarray(preview))) == scene.background


class LinearVAE(torch.nn.Module):
    """A VAE whose latents are an exact affine map of the 8×8-patch mean colours."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=0.5)
        self.mix = torch.nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.mix.weight.copy_(
                torch.tensor([[1.0, 0.2, 0], [0, 1, 0.3], [0.1, 0, 1], [0.5, -0.5, 0.25]])[..., None, None]
            )
            self.mix.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))

    def encode(self, pixels: torch.Tensor) -> SimpleNamespace:
        mean = self.mix(torch.nn.functional.avg_pool2d(pixels, 8))
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean))


def test_linear_approximation_inverts_a_linear_vae():
    model = SimpleNamespace(vae=LinearVAE(), vae_scale_factor=8, device=torch.device("cpu"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        latents = model.vae.encode(_pixels(image)).latent_dist.mean * 0.5
    preview = np.asarray(LatentPreviewer().approximate(model, latents), np.float32)
    expected = (torch.nn.functional.avg_pool2d(_pixels(image), 8)[0].permute(1, 2, 0).numpy() + 1) * 127.5
    assert preview.shape == (8, 8, 3)
    assert np.abs(preview - expected).max() <= 1.0
