"""Inpainting masks as A1111 prepares them: white = repaint, black = keep.

The steps and their order follow A1111 so the same mask settings repaint the same area: round the
mask to black/white, optionally invert it, blur it (a separable Gaussian, kernel 2·⌊2.5σ + 0.5⌋ + 1,
horizontal then vertical), and for "only masked" find the padded box around it, widened to the output's
aspect ratio. What is pasted back over the result is the original picture through the inverted mask,
so pixels outside the (blurred) mask come back exactly as they were.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), as PIL crops


def binary_mask(image: Image.Image) -> Image.Image:
    """A mask image as black/white "L": a painted RGBA mask by its alpha (as a sketch layer is), any
    other image by its brightness, thresholded at half."""
    if image.mode in ("RGBA", "LA", "PA") and image.getextrema()[-1] != (255, 255):
        grey = image.getchannel("A")
    else:
        grey = image.convert("L")
    return grey.point(lambda value: 255 if value > 128 else 0)


def mask_from_alpha(image: Image.Image) -> Image.Image | None:
    """The transparent part of an init image as a mask (repaint what is see-through), or None when the
    image is fully opaque."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return None
    alpha = image.convert("RGBA").getchannel("A")
    if alpha.getextrema() == (255, 255):
        return None
    return alpha.point(lambda value: 255 if value < 128 else 0)


def _kernel(sigma: float) -> int:
    return 2 * int(2.5 * sigma + 0.5) + 1


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """Gaussian blur of σ `blur_x` across and `blur_y` down (0 = none), in A1111's order."""
    pixels = np.array(mask.convert("L"))
    if blur_x > 0:
        pixels = cv2.GaussianBlur(pixels, (_kernel(blur_x), 1), blur_x)
    if blur_y > 0:
        pixels = cv2.GaussianBlur(pixels, (1, _kernel(blur_y)), blur_y)
    return Image.fromarray(pixels)


def crop_region(mask: Image.Image, padding: int) -> Box | None:
    """The box around the mask's non-black pixels grown by `padding` on every side and kept inside
    the image; None for an empty mask."""
    box = mask.convert("L").getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    return (
        max(left - padding, 0),
        max(top - padding, 0),
        min(right + padding, mask.width),
        min(bottom + padding, mask.height),
    )


def _widen(start: int, end: int, wanted: int, limit: int) -> tuple[int, int]:
    """Grow [start, end) to `wanted` long around its centre, shifted (not shrunk) to stay in [0, limit)."""
    grow = wanted - (end - start)
    start, end = start - grow // 2, end + grow - grow // 2
    if end > limit:
        start, end = start - (end - limit), limit
    if start < 0:
        start, end = 0, min(end - start, limit)
    return start, end


def match_aspect(box: Box, width: int, height: int, image_size: tuple[int, int]) -> Box:
    """Grow `box` along one axis until it has the aspect ratio of `width`×`height`, so cropping it and
    resizing to the output size does not distort (A1111's expand_crop_region)."""
    left, top, right, bottom = box
    box_ratio = (right - left) / (bottom - top)
    target_ratio = width / height
    if box_ratio > target_ratio:
        top, bottom = _widen(top, bottom, int((right - left) / target_ratio), image_size[1])
    else:
        left, right = _widen(left, right, int((bottom - top) * target_ratio), image_size[0])
    return left, top, right, bottom


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """ "Masked content: fill": the masked area painted with the colours around it, coarse to fine.

    Normalised convolution: blurring the kept pixels and their weights with the same Gaussian and
    dividing gives, at each masked pixel, the average colour of the kept pixels near it; wide blurs
    first, each narrower one laid over where it has support, so every hole is filled and edges keep
    their local colour. (A1111 gets a similar smear by repeated blurring.)
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    keep = (np.asarray(mask.convert("L")) < 128).astype(np.float32)
    if keep.min() == 1.0 or keep.max() == 0.0:
        return image.convert("RGB")
    result = rgb.copy()
    filled = np.zeros(keep.shape, dtype=bool)
    for sigma in (64.0, 16.0, 4.0, 1.0):
        weight = cv2.GaussianBlur(keep, (0, 0), sigma)
        colour = cv2.GaussianBlur(rgb * keep[..., None], (0, 0), sigma)
        supported = weight > 1e-3
        result[supported] = colour[supported] / weight[supported, None]
        filled |= supported
    result[~filled] = (rgb * keep[..., None]).sum((0, 1)) / keep.sum()
    result = np.where(keep[..., None] > 0, rgb, result)
    return Image.fromarray(np.clip(result + 0.5, 0, 255).astype(np.uint8))


def overlay_mask(blurred: Image.Image, *, whole_picture: bool) -> Image.Image:
    """How strongly the result shows through when pasted over the original: for "whole picture" the
    blurred mask doubled (its inner half fully repainted), for "only masked" the blurred mask itself."""
    if not whole_picture:
        return blurred
    return blurred.point(lambda value: min(255, value * 2))


def paste_over(original: Image.Image, result: Image.Image, overlay: Image.Image) -> Image.Image:
    """`result` shown through `overlay` (white = result) on top of `original`: outside the mask every
    pixel is the original's, unchanged."""
    return Image.composite(result.convert("RGB"), original.convert("RGB"), overlay.convert("L"))


def latent_mask(mask: Image.Image, latent_size: tuple[int, int]) -> np.ndarray:
    """The mask at latent resolution (width, height) as 0/1 floats: resized as A1111 does (bicubic)
    and rounded, so a latent is either repainted or kept."""
    small = mask.convert("L").resize(latent_size, Image.Resampling.BICUBIC)
    return np.around(np.asarray(small, dtype=np.float32) / 255.0)
