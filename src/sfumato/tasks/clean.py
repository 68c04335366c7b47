"""Object removal, Lama-Cleaner style: the masked area painted from its surroundings.

Three kinds of method:
- OpenCV's inpainting ("telea": Telea's fast marching method, "ns": Navier-Stokes), built in and
  needing no weights; good for small objects on smooth or simple backgrounds;
- a masked-image model file from models/inpaint (LaMa, through spandrel), named by file, for large
  holes in textured pictures;
- "sd", which the CLI runs: Telea's fill as a first guess, then img2img inpainting with the loaded
  checkpoint over the masked area, so the filled area gets the picture's texture (`sfumato clean
  --method sd`).
Outside the mask every pixel stays exactly as it was.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from sfumato.errors import unknown_name
from sfumato.imaging.masks import binary_mask
from sfumato.upscalers.models import ImageModels

OPENCV_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
SD_METHOD = "sd"


def clean_method_names(models: ImageModels | None = None) -> list[str]:
    return [*OPENCV_METHODS, SD_METHOD, *(models.names() if models else [])]


def fit_mask(mask: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, list[str]]:
    """The mask as 0/255 at `size`, and a note for the user when it had to be resized."""
    mask = binary_mask(mask)
    if mask.size == size:
        return mask, []
    note = (
        f"the mask is {mask.width}×{mask.height} but the image {size[0]}×{size[1]}: "
        "the mask was resized to the image"
    )
    return binary_mask(mask.resize(size, Image.Resampling.LANCZOS)), [note]


def clean_image(
    image: Image.Image,
    mask: Image.Image,
    *,
    method: str = "telea",
    radius: int = 3,
    models: ImageModels | None = None,
) -> tuple[Image.Image, list[str]]:
    """`image` with the white area of `mask` filled in by an OpenCV method or a model from `models`,
    and notes for the user (a resized mask)."""
    model = models.find(method) if models and method not in OPENCV_METHODS else None
    if method not in OPENCV_METHODS and model is None:
        known = [name for name in clean_method_names(models) if name != SD_METHOD]
        raise unknown_name("clean method", method, known, field="method")
    mask, notes = fit_mask(mask, image.size)
    rgb = np.asarray(image.convert("RGB"))
    holes = np.asarray(mask)
    if model is None:
        filled = cv2.inpaint(rgb, holes, max(1, radius), OPENCV_METHODS[method])
    else:
        assert models is not None
        filled = np.asarray(models.get(method, field="method").inpaint(Image.fromarray(rgb), mask))
    return Image.fromarray(np.where(holes[..., None] > 0, filled, rgb)), notes
