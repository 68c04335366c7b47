"""A1111's img2img resize modes, so the same settings frame the same picture.

0 "Just resize" stretches to the target size; 1 "Crop and resize" scales to cover it and crops the
centre; 2 "Resize and fill" scales to fit inside it and fills the bands left over by stretching the
picture's edge rows or columns outward; 3 "Just resize (latent upscale)" leaves the pixels alone (the
task resizes the latents instead). Lanczos throughout, A1111's default img2img upscaler.
"""

from __future__ import annotations

from typing import Literal

from PIL import Image

ResizeMode = Literal[0, 1, 2, 3]
RESIZE_MODE_NAMES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
LANCZOS = Image.Resampling.LANCZOS


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` framed to `width`×`height` the way resize mode `mode` does it (mode 3: unchanged)."""
    if mode == 3:
        return image.copy()
    if mode == 0 or image.size == (width, height):
        return image.resize((width, height), LANCZOS)
    cover = mode == 1
    scale = (max if cover else min)(width / image.width, height / image.height)
    scaled_w = max(1, round(image.width * scale))
    scaled_h = max(1, round(image.height * scale))
    scaled = image.resize((scaled_w, scaled_h), LANCZOS)
    canvas = Image.new(image.mode, (width, height))
    left, top = (width - scaled_w) // 2, (height - scaled_h) // 2
    canvas.paste(scaled, (left, top))
    if cover:
        return canvas
    _stretch_edges(canvas, scaled, left, top)
    return canvas


def _stretch_edges(canvas: Image.Image, scaled: Image.Image, left: int, top: int) -> None:
    """Fill the bands around `scaled` (pasted at left, top) with its outermost rows or columns."""
    right, bottom = left + scaled.width, top + scaled.height
    if top > 0:
        canvas.paste(scaled.crop((0, 0, scaled.width, 1)).resize((scaled.width, top)), (left, 0))
    if bottom < canvas.height:
        edge = scaled.crop((0, scaled.height - 1, scaled.width, scaled.height))
        canvas.paste(edge.resize((scaled.width, canvas.height - bottom)), (left, bottom))
    if left > 0:
        canvas.paste(scaled.crop((0, 0, 1, scaled.height)).resize((left, scaled.height)), (0, top))
    if right < canvas.width:
        edge = scaled.crop((scaled.width - 1, 0, scaled.width, scaled.height))
        canvas.paste(edge.resize((canvas.width - right, scaled.height)), (right, top))
