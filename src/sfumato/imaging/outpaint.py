"""Outpainting canvases: the picture on a larger canvas, the new margins pre-filled, and the mask
that says "paint the margins" for the inpainting pass that follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageColor

from sfumato.errors import UserError

OutpaintFill = Literal["edge", "mirror", "noise", "colour"]
OUTPAINT_FILLS: tuple[str, ...] = ("edge", "mirror", "noise", "colour")


@dataclass(frozen=True)
class Margins:
    """Pixels added on each side."""

    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0

    def __post_init__(self) -> None:
        if min(self.left, self.top, self.right, self.bottom) < 0:
            raise UserError("outpaint margins cannot be negative", field="outpaint")

    @property
    def any(self) -> bool:
        return bool(self.left or self.top or self.right or self.bottom)


def extend_canvas(
    image: Image.Image, margins: Margins, fill: str = "edge", colour: str = "#808080", seed: int = 0
) -> tuple[Image.Image, Image.Image]:
    """The larger canvas with `image` at (left, top) and the margins filled, and the mask (white =
    the margins). `fill`: "edge" stretches the border pixels, "mirror" reflects the picture, "noise"
    is seeded uniform noise, "colour" a flat `colour`."""
    if fill not in OUTPAINT_FILLS:
        raise UserError(
            f"outpaint fill must be one of {', '.join(OUTPAINT_FILLS)}, not {fill!r}", field="outpaint_fill"
        )
    pixels = np.asarray(image.convert("RGB"))
    sides = (margins.top, margins.bottom, margins.left, margins.right)
    if fill == "mirror" and (
        max(margins.top, margins.bottom) >= image.height or max(margins.left, margins.right) >= image.width
    ):
        raise UserError("mirror fill needs margins smaller than the picture", field="outpaint_fill")
    if fill in ("edge", "mirror"):
        border = cv2.BORDER_REPLICATE if fill == "edge" else cv2.BORDER_REFLECT_101
        canvas = cv2.copyMakeBorder(pixels, *sides, border)
    else:
        height, width = (
            image.height + margins.top + margins.bottom,
            image.width + margins.left + margins.right,
        )
        if fill == "noise":
            canvas = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        else:
            try:
                rgb = ImageColor.getrgb(colour)[:3]
            except ValueError as exc:
                raise UserError(
                    f"outpaint colour {colour!r} is not a colour", field="outpaint_colour"
                ) from exc
            canvas = np.empty((height, width, 3), dtype=np.uint8)
            canvas[:] = rgb
        canvas[margins.top : margins.top + image.height, margins.left : margins.left + image.width] = pixels
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[margins.top : margins.top + image.height, margins.left : margins.left + image.width] = 0
    return Image.fromarray(canvas), Image.fromarray(mask)
