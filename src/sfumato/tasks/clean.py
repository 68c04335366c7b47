"""Object removal without weights, Lama-Cleaner style: the masked area painted from its surroundings
by OpenCV's inpainting (Telea's fast marching method, or Navier-Stokes), which needs no model.

Good for small objects on smooth or simple backgrounds; large holes in textured pictures want an
inpainting model (`sfumato img2img --mask` with a checkpoint). Outside the mask every pixel stays.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from sfumato.errors import unknown_name
from sfumato.imaging.masks import binary_mask

METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


def clean_image(
    image: Image.Image, mask: Image.Image, *, method: str = "telea", radius: int = 3
) -> tuple[Image.Image, list[str]]:
    """`image` with the white area of `mask` filled in, and notes for the user (a resized mask)."""
    if method not in METHODS:
        raise unknown_name("clean method", method, METHODS, field="method")
    notes = []
    mask = binary_mask(mask)
    if mask.size != image.size:
        notes.append(
            f"the mask is {mask.width}×{mask.height} but the image {image.width}×{image.height}: "
            "the mask was resized to the image"
        )
        mask = binary_mask(mask.resize(image.size, Image.Resampling.LANCZOS))
    rgb = np.asarray(image.convert("RGB"))
    holes = np.asarray(mask)
    filled = cv2.inpaint(rgb, holes, max(1, radius), METHODS[method])
    return Image.fromarray(np.where(holes[..., None] > 0, filled, rgb)), notes
