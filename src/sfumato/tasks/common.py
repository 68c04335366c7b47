"""Pieces every generation task shares: seeds, the latent <-> image bridge, and the sampling run."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from sfumato.errors import InterruptedByUser, SkippedByUser
from sfumato.models.loader import LoadedModel

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


@torch.no_grad()
def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """VAE-decode latents to RGB images. SDXL's VAE overflows in fp16, so it decodes in fp32 there."""
    vae = model.vae
    dtype = next(vae.parameters()).dtype
    upcast = bool(vae.config.get("force_upcast")) and dtype == torch.float16
    if upcast:
        vae.to(torch.float32)
    try:
        scaled = latents.to(model.device, torch.float32 if upcast else dtype) / vae.config.scaling_factor
        images = []
        for one in scaled.split(1):  # one at a time: the VAE decoder is the memory peak at large sizes
            pixels = vae.decode(one).sample
            pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            images.append(Image.fromarray(pixels[0].permute(1, 2, 0).cpu().numpy()))
    finally:
        if upcast:
            vae.to(dtype)
    return images


def stop_check(control: RunControl) -> None:
    if control.should_stop():
        control.interrupted = True
        raise InterruptedByUser
    if control.should_skip():
        raise SkippedByUser
