"""The "Extras" job: resize an image with an upscaler, by a factor or to a size, as A1111 does.

Upscalers are Pillow's resampling filters (Lanczos, Nearest), "None" (leave the pixels as they are),
and every model file in the upscaler folders (ESRGAN family through spandrel, named by file as A1111
lists them). A model runs until the picture covers the target, then Lanczos brings it to the exact
size, as in A1111. A1111's two-upscaler blend is kept: `upscaler_2` at `visibility` is mixed into the
result of `upscaler_1`.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from sfumato.errors import UserError, unknown_name
from sfumato.upscalers.models import ImageModels

FILTERS: dict[str, Image.Resampling | None] = {
    "None": None,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
MAX_OUTPUT_PIXELS = 16384 * 16384


@dataclass(frozen=True)
class ResizeTarget:
    """By `scale` (resize_mode 0), or to `width`×`height` (resize_mode 1), cropping to keep the
    aspect ratio when `crop` (A1111's "Crop to fit"), else stretching."""

    scale: float = 2.0
    width: int | None = None
    height: int | None = None
    crop: bool = True

    def size_for(self, image: Image.Image) -> tuple[int, int]:
        if self.width and self.height:
            return self.width, self.height
        return max(1, round(image.width * self.scale)), max(1, round(image.height * self.scale))


@dataclass(frozen=True)
class Tiling:
    """How model upscalers cut a picture: `tile` pixels a side (0: whole), `overlap` of context."""

    tile: int = 192
    overlap: int = 16


def upscaler_names(models: ImageModels | None = None) -> list[str]:
    return [*FILTERS, *(models.names() if models else [])]


def check_upscaler(name: str, models: ImageModels | None, field: str) -> None:
    """Fail early (before any model loads) on an upscaler name that is neither a filter nor a file."""
    if name not in FILTERS and (models is None or models.find(name) is None):
        raise unknown_name("upscaler", name, upscaler_names(models), field=field)


def _fit(
    image: Image.Image, target: ResizeTarget, width: int, height: int, method: Image.Resampling
) -> Image.Image:
    if target.width and target.height and target.crop:
        ratio = max(width / image.width, height / image.height)
        scaled = image.resize((round(image.width * ratio), round(image.height * ratio)), method)
        left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    return image.resize((width, height), method)


def _resample(
    image: Image.Image,
    name: str,
    target: ResizeTarget,
    field: str,
    models: ImageModels | None,
    tiling: Tiling,
) -> Image.Image:
    width, height = target.size_for(image)
    if width * height > MAX_OUTPUT_PIXELS:
        raise UserError(f"{field}: the result would be {width}×{height}, larger than allowed", field=field)
    if name in FILTERS:
        method = FILTERS[name]
        return image.copy() if method is None else _fit(image, target, width, height, method)
    check_upscaler(name, models, field)
    assert models is not None
    model = models.get(name, field=field)
    if target.width and target.height and target.crop:  # cover the box, then crop
        ratio = max(width / image.width, height / image.height)
        cover = (round(image.width * ratio), round(image.height * ratio))
    else:
        cover = (width, height)
    upscaled = model.upscale_to(image, *cover, tile=tiling.tile, overlap=tiling.overlap)
    if upscaled.size == (width, height):
        return upscaled
    return _fit(upscaled, target, width, height, Image.Resampling.LANCZOS)


def upscale(
    image: Image.Image,
    target: ResizeTarget,
    *,
    upscaler_1: str = "None",
    upscaler_2: str = "None",
    visibility: float = 0.0,
    models: ImageModels | None = None,
    tiling: Tiling = Tiling(),
) -> Image.Image:
    """The image resized by `upscaler_1`, blended with `upscaler_2`'s result at `visibility`.
    `models` holds the upscaler model files (None: the built-in filters only)."""
    if not 0.0 <= visibility <= 1.0:
        raise UserError(
            "extras_upscaler_2_visibility: must be from 0 to 1", field="extras_upscaler_2_visibility"
        )
    rgb = image.convert("RGB")
    first = _resample(rgb, upscaler_1, target, "upscaler_1", models, tiling)
    if upscaler_2 == "None" or visibility == 0:
        return first
    second = _resample(rgb, upscaler_2, target, "upscaler_2", models, tiling)
    if second.size != first.size:  # "None" keeps the size: blend at the upscaled size
        second = second.resize(first.size, Image.Resampling.LANCZOS)
    return Image.blend(first, second, visibility)
