"""Pieces every generation task shares: seeds, the latent <-> image bridge, and the sampling run."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderTiny
from PIL import Image

from sfumato.errors import InterruptedByUser, SkippedByUser, UserError
from sfumato.models import vae_tiling
from sfumato.models.loader import LoadedModel
from sfumato.models.stored_weights import compute_dtype
from sfumato.runtime import peak_work

MAX_SEED = 2**32 - 1


def resolve_seed(seed: int) -> int:
    """-1 means a fresh random seed (as A1111 draws it)."""
    return random.randrange(MAX_SEED) if seed == -1 else seed


@dataclass
class Progress:
    """What a caller sees after each sampling step (CLI bar, API progress, UI previews)."""

    step: int
    total: int
    image_index: int
    denoised: torch.Tensor | None = None


@dataclass
class RunControl:
    """Hooks a caller passes down: progress reporting, each finished image (with the job's result so
    far, for its infotext), and two flags checked after every step: stop (end the job, keeping the
    current image) and skip (A1111's Skip: end this batch with its current image, go on to the next;
    the caller's flag should reset once read)."""

    on_step: Callable[[Progress], None] | None = None
    on_image: Callable[[Any, Any], None] | None = None
    should_stop: Callable[[], bool] = lambda: False
    should_skip: Callable[[], bool] = lambda: False
    interrupted: bool = field(default=False, init=False)


@contextmanager
def vae_dtype(model: LoadedModel, *, force: bool = False) -> Iterator[torch.dtype]:
    """The dtype to run the VAE in: its own, except that a VAE which overflows in fp16 (SDXL's,
    `force_upcast`, or any when `force`) runs in fp32 for the duration."""
    vae = model.vae
    dtype = compute_dtype(vae)
    upcast = (force or bool(vae.config.get("force_upcast"))) and dtype == torch.float16
    if not upcast:
        yield dtype
        return
    vae.to(torch.float32)
    try:
        yield torch.float32
    finally:
        vae.to(dtype)


# Latent area above which the heap is trimmed before decoding (64×64: an SD1 image above 512²).
TRIM_BEFORE_DECODE_AREA = 64 * 64


@torch.no_grad()
def decode_latents(model: LoadedModel, latents: torch.Tensor, method: str = "Full") -> list[Image.Image]:
    """VAE-decode latents to RGB images, one at a time: the decoder is the memory peak at large sizes.

    A half-precision VAE that overflows (NaN: SDXL's original VAE, A1111 #7633) decodes that image
    again in fp32 (A1111's "revert VAE to 32-bit floats"), so the user never gets a black picture.
    `method` is A1111's `sd_vae_decode_method`: "TAESD" decodes with the TAESD decoder attached to
    the model (`sfumato.models.taesd`), far cheaper and approximate.

    Above `TRIM_BEFORE_DECODE_AREA` the decode is the job's memory peak, so it runs in
    `runtime.peak_work()`: the free heap that sampling left (`sfumato.runtime` keeps freed blocks below
    256 MiB) goes back to the OS first, and the decode's own large blocks are mapped apart."""
    if method == "TAESD":
        if model.taesd is None:
            raise UserError(
                "sd_vae_decode_method: no TAESD decoder is loaded for this model",
                field="sd_vae_decode_method",
            )
        return [taesd_image(model.taesd, one) for one in latents.split(1)]
    if latents.shape[-2] * latents.shape[-1] <= TRIM_BEFORE_DECODE_AREA:
        return [_decode_one(model, one) for one in latents.split(1)]
    with peak_work():  # once per job, not per image: one trim for the whole batch
        return [_decode_one(model, one) for one in latents.split(1)]


@torch.no_grad()
def taesd_image(decoder: AutoencoderTiny, latents: torch.Tensor) -> Image.Image:
    """The first image of (scaled) latents, decoded by a TAESD decoder."""
    parameter = next(decoder.parameters())
    return _to_image(decoder.decode(latents[:1].to(parameter.device, parameter.dtype)).sample)


def _decode_one(model: LoadedModel, latents: torch.Tensor) -> Image.Image:
    """One image's latents decoded (in tiles only if it does not fit: `sfumato.models.vae_tiling`)."""
    scaling = model.vae.config.scaling_factor
    with vae_dtype(model) as dtype:
        pixels = vae_tiling.decode(model.vae, latents.to(model.device, dtype) / scaling)
    if dtype == torch.float16 and not torch.isfinite(pixels).all():
        print("sfumato: the VAE overflowed in fp16; decoding this image in fp32", file=sys.stderr)
        with vae_dtype(model, force=True) as dtype:
            pixels = vae_tiling.decode(model.vae, latents.to(model.device, dtype) / scaling)
    return _to_image(pixels)


def _to_image(pixels: torch.Tensor) -> Image.Image:
    """The first of (B, 3, H, W) pixels in [-1, 1] as an RGB image."""
    pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels[0].permute(1, 2, 0).cpu().numpy())


def image_to_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as a (1, 3, H, W) float tensor in [-1, 1], the VAE's input range."""
    array = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy())
    return (array / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)


@torch.no_grad()
def encode_pixels(model: LoadedModel, pixels: torch.Tensor, *, scaled: bool = True) -> torch.Tensor:
    """VAE-encode (B, 3, H, W) pixels in [-1, 1] to the posterior mean, times the scaling factor when
    `scaled` (the UNet's latent space; pix2pix conditions on the unscaled mean).

    Each image is encoded whole unless it does not fit (`sfumato.models.vae_tiling`).
    The mean, not a sample: A1111 samples the posterior from the global RNG, which makes img2img
    differ run to run by the posterior's spread; the mean keeps img2img a function of its seed.
    """
    with vae_dtype(model) as dtype:
        moments = [
            vae_tiling.encode(model.vae, one.to(model.device, dtype)).mean.float() for one in pixels.split(1)
        ]
    latents = torch.cat(moments)
    return latents * model.vae.config.scaling_factor if scaled else latents


def stop_check(control: RunControl) -> None:
    if control.should_stop():
        control.interrupted = True
        raise InterruptedByUser
    if control.should_skip():
        raise SkippedByUser
