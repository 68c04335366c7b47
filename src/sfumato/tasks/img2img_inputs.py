"""Framing an img2img job's picture and mask the way A1111 does, before anything touches the model.

`prepare_init` turns the user's init image and mask into what the VAE encodes (framed to the
processing size, for "only masked" the padded box around the mask, with "fill" painted in), the mask
at that size, and a `PasteBack` that puts a result back where it belongs: resized into the box, then
laid over the original through the blurred mask, so every pixel outside it is the original's, exactly.

One rule A1111 lacks, kept because it is what users expect from "unmasked pixels come back as they
were": unless width and height are given, the output has the init image's own size even when that is
not a multiple of 8 (the model works at the nearest multiple and the result is resized back before
the paste).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageOps

from sfumato.imaging.masks import (
    Box,
    binary_mask,
    blur_mask,
    crop_region,
    fill_masked,
    mask_from_alpha,
    match_aspect,
    overlay_mask,
    paste_over,
)
from sfumato.imaging.resize import resize_image
from sfumato.request import Img2ImgRequest

MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # A1111's inpainting_fill 0-3
BACKGROUND = (255, 255, 255)  # A1111's img2img_background_color: transparency is flattened on white


@dataclass
class Img2ImgInputs:
    """The pictures of an img2img job (they travel beside the request, which is JSON-able)."""

    image: Image.Image
    mask: Image.Image | None = None  # white = repaint; None: the init image's transparency, if any


@dataclass
class PasteBack:
    """How a result at the processing size becomes the output: resized into `box` (only masked) or to
    the output size, then shown through `overlay` over `original` (no overlay: the result as it is)."""

    original: Image.Image
    overlay: Image.Image | None
    box: Box | None = None

    def apply(self, result: Image.Image) -> Image.Image:
        if self.box is not None:
            left, top, right, bottom = self.box
            placed = self.original.copy()
            placed.paste(resize_image(1, result, right - left, bottom - top), (left, top))
            result = placed
        elif result.size != self.original.size:
            result = resize_image(0, result, *self.original.size)
        if self.overlay is None:
            return result
        return paste_over(self.original, result, self.overlay)


@dataclass
class PreparedInit:
    """What the sampling run needs from the pictures."""

    image: Image.Image  # processing size: what the VAE encodes and inpaint/pix2pix models see
    mask: Image.Image | None  # processing size, blurred; None: no inpainting
    paste: PasteBack
    latent_resize: bool = False  # resize mode 3: the init was encoded at its own size
    encode_image: Image.Image | None = None  # mode 3: the unresized init the VAE encodes
    params: dict[str, Any] = field(default_factory=dict)  # infotext keys A1111 writes for these settings
    notes: list[str] = field(default_factory=list)

    def pixels(self, image: Image.Image | None = None) -> torch.Tensor:
        from sfumato.tasks.common import image_to_pixels

        return image_to_pixels(self.image if image is None else image)

    def mask_tensor(self) -> torch.Tensor | None:
        if self.mask is None:
            return None
        return self.pixels(self.mask.convert("RGB"))[:, :1].add(1).div(2)


def flatten(image: Image.Image) -> Image.Image:
    """RGB, transparent parts on white (A1111's images.flatten)."""
    if image.mode in ("RGBA", "LA", "PA", "P") and ("A" in image.getbands() or "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def round_to(value: int, factor: int) -> int:
    """The nearest multiple of `factor`, at least `factor`."""
    return max(factor, round(value / factor) * factor)


def sizes(
    request: Img2ImgRequest, init_size: tuple[int, int], factor: int, *, only_masked: bool
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(processing size, output size) by the rule in the module docstring; "only masked" always gives
    back the init's size, its box painted at the processing size."""
    given = (request.width or 0, request.height or 0)
    rounded = (round_to(init_size[0], factor), round_to(init_size[1], factor))
    process = (given[0] or rounded[0], given[1] or rounded[1])
    if only_masked:
        return process, init_size
    output = (given[0] or init_size[0], given[1] or init_size[1])
    return process, output


def prepare_init(inputs: Img2ImgInputs, request: Img2ImgRequest, factor: int) -> PreparedInit:
    """Frame the init image and mask as A1111 does (see the module docstring)."""
    image = flatten(inputs.image)
    notes: list[str] = []
    mask = _user_mask(inputs, image.size, request, notes)
    params: dict[str, Any] = {"Denoising strength": request.denoising_strength}
    if mask is not None:
        blur_x, blur_y = request.blur
        params["Mask blur"] = blur_x if blur_x == blur_y else None
        if request.inpainting_mask_invert:
            params["Mask mode"] = "Inpaint not masked"
        if request.inpaint_full_res and crop_region(mask, 0) is None:
            notes.append('the mask is empty, so "only masked" ran as plain img2img over the whole picture')
            mask = None
    only_masked = mask is not None and request.inpaint_full_res
    process, output = sizes(request, image.size, factor, only_masked=only_masked)
    if only_masked:
        prepared = _only_masked(image, mask, request, process, params)  # type: ignore[arg-type]
    else:
        prepared = _whole_picture(image, mask, request, process, output)
    if mask is not None:
        if request.inpainting_fill != 1:
            params["Masked content"] = MASKED_CONTENT[request.inpainting_fill]
        if request.inpainting_fill == 0:
            prepared.image = fill_masked(prepared.image, prepared.mask)  # type: ignore[arg-type]
            if prepared.encode_image is not None:
                prepared.encode_image = fill_masked(prepared.encode_image, mask)
    if request.initial_noise_multiplier != 1.0:
        params["Noise multiplier"] = request.initial_noise_multiplier
    prepared.params = {**params, **prepared.params}
    prepared.notes = notes
    return prepared


def _user_mask(
    inputs: Img2ImgInputs, size: tuple[int, int], request: Img2ImgRequest, notes: list[str]
) -> Image.Image | None:
    """The mask as black/white at the init's size, inverted and blurred as asked; None for none."""
    if inputs.mask is not None:
        mask = binary_mask(inputs.mask)
    elif (alpha := mask_from_alpha(inputs.image)) is not None:
        mask = alpha
    else:
        return None
    if mask.size != size:
        notes.append(
            f"the mask is {mask.width}×{mask.height} but the image {size[0]}×{size[1]}: "
            "the mask was resized to the image"
        )
        mask = binary_mask(mask.resize(size, Image.Resampling.LANCZOS))
    if request.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    return blur_mask(mask, *request.blur)


def _whole_picture(
    image: Image.Image,
    mask: Image.Image | None,
    request: Img2ImgRequest,
    process: tuple[int, int],
    output: tuple[int, int],
) -> PreparedInit:
    mode = request.resize_mode
    framing = 0 if mode == 3 else mode  # mode 3 resizes latents; pictures around it are stretched
    framed = resize_image(framing, image, *process)
    original = image if output == image.size else resize_image(framing, image, *output)
    if mask is None:
        paste = PasteBack(original, None)
        framed_mask = None
    else:
        framed_mask = resize_image(framing, mask, *process)
        output_mask = mask if output == mask.size else resize_image(framing, mask, *output)
        paste = PasteBack(original, overlay_mask(output_mask, whole_picture=True))
    return PreparedInit(
        framed,
        framed_mask,
        paste,
        latent_resize=mode == 3,
        encode_image=image if mode == 3 else None,
    )


def _only_masked(
    image: Image.Image,
    mask: Image.Image,
    request: Img2ImgRequest,
    process: tuple[int, int],
    params: dict[str, Any],
) -> PreparedInit:
    """Inpaint area "only masked": the padded box around the mask, widened to the processing aspect
    ratio, is what the model paints at full processing size."""
    padding = request.inpaint_full_res_padding
    box = crop_region(mask, padding)
    assert box is not None
    box = match_aspect(box, *process, image.size)
    params["Inpaint area"] = "Only masked"
    params["Masked area padding"] = padding
    return PreparedInit(
        resize_image(2, image.crop(box), *process),
        resize_image(2, mask.crop(box), *process),
        PasteBack(image, overlay_mask(mask, whole_picture=False), box),
    )
