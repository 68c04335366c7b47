"""The extra UNet input channels of inpainting (9-channel) and instruct-pix2pix (8-channel) models.

Inpainting models see, beside the noisy latents, the mask (1 = repaint) at latent size and the latents
of the image with the masked area blanked to grey: 1 + 4 channels, in that order (the layout of the
RunwayML checkpoint, diffusers and A1111). `mask_weight` is A1111's "inpainting conditioning mask
strength": at 1 the masked area is blanked fully, at 0 the model sees the whole image. With no image
(txt2img, or img2img without a mask) the whole picture counts as masked, as A1111 does.

Instruct-pix2pix models see the source image's *unscaled* posterior mean (as trained), or zeros in
txt2img.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sfumato.models.loader import LoadedModel
from sfumato.tasks.common import encode_pixels
from sfumato.tasks.sampling_run import ImageGuidance


def inpaint_conditioning(
    model: LoadedModel,
    pixels: torch.Tensor | None,
    mask: torch.Tensor | None,
    latent_size: tuple[int, int],
    batch: int,
    mask_weight: float = 1.0,
) -> torch.Tensor:
    """(batch, 5, h, w): the rounded mask (nearest-resized) then the masked image's latents.
    `pixels` (1, 3, H, W) in [-1, 1]; `mask` (1, 1, H, W) in [0, 1]; None = nothing to keep."""
    height, width = latent_size
    factor = model.vae_scale_factor
    if pixels is None:
        pixels = torch.zeros(1, 3, height * factor, width * factor)
    if mask is None:
        mask = torch.ones(1, 1, pixels.shape[2], pixels.shape[3])
    mask = mask.round()
    masked = torch.lerp(pixels, pixels * (1.0 - mask), mask_weight)
    latents = encode_pixels(model, masked)
    small = F.interpolate(mask, size=latent_size).to(latents)
    return torch.cat([small, latents], dim=1).repeat(batch, 1, 1, 1)


def pix2pix_conditioning(
    model: LoadedModel, pixels: torch.Tensor | None, latent_size: tuple[int, int], batch: int
) -> torch.Tensor:
    """(batch, 4, h, w): the source image's unscaled latents, or zeros without a source."""
    if pixels is None:
        return torch.zeros(batch, model.latent_channels, *latent_size)
    return encode_pixels(model, pixels, scaled=False).repeat(batch, 1, 1, 1)


def image_guidance(
    model: LoadedModel,
    latent_size: tuple[int, int],
    batch: int,
    *,
    pixels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    mask_weight: float = 1.0,
    image_cfg_scale: float | None = None,
) -> ImageGuidance | None:
    """What the model's extra channels need (None for an ordinary 4-channel model). pix2pix's
    three-way guidance is on when an image is given and `image_cfg_scale` is not 1 (at 1 it equals
    plain CFG, so AND prompts work there, as in A1111)."""
    if model.variant == "inpaint":
        return ImageGuidance(inpaint_conditioning(model, pixels, mask, latent_size, batch, mask_weight))
    if model.variant == "pix2pix":
        scale = image_cfg_scale if pixels is not None and image_cfg_scale not in (None, 1.0) else None
        return ImageGuidance(pix2pix_conditioning(model, pixels, latent_size, batch), scale)
    return None
