"""The "Extras" job: resize an image with an upscaler, by a factor or to a size, as A1111 does.

Built-in upscalers are Pillow's resampling filters (Lanczos, Nearest) and "None" (leave the pixels as
they are). A1111's two-upscaler blend is kept: `upscaler_2` at `visibility` is mixed into the result of
`upscaler_1`. Model upscalers (ESRGAN family through spandrel) plug in by name here.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from sfumato.errors import UserError, unknown_name

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


def upscaler_names() -> list[str]:
    return list(FILTERS)


def _resample(image: Image.Image, name: str, target: ResizeTarget, field: str) -> Image.Image:
    if name not in FILTERS:
        raise unknown_name("upscaler", name, FILTERS, field=field)
    width, height = target.size_for(image)
    if width * height > MAX_OUTPUT_PIXELS:
        raise UserError(f"{field}: the result would be {width}×{height}, larger than allowed", field=field)
    method = FILTERS[name]
    if method is None:
        return image.copy()
    if target.width and target.height and target.crop:
        ratio = max(width / image.width, height / image.height)
        scaled = image.resize((round(image.width * ratio), round(image.height * ratio)), method)
        left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    return image.resize((width, height), method)


def upscale(
    image: Image.Image,
    target: ResizeTarget,
    *,
    upscaler_1: str = "None",
    upscaler_2: str = "None",
    visibility: float = 0.0,
) -> Image.Image:
    """The image resized by `upscaler_1`, blended with `upscaler_2`'s result at `visibility`."""
    if not 0.0 <= visibility <= 1.0:
        raise UserError(
            "extras_upscaler_2_visibility: must be from 0 to 1", field="extras_upscaler_2_visibility"
        )
    rgb = image.convert("RGB")
    first = _resample(rgb, upscaler_1, target, "upscaler_1")
    if upscaler_2 == "None" or visibility == 0:
        return first
    second = _resample(rgb, upscaler_2, target, "upscaler_2")
    if second.size != first.size:  # "None" keeps the size: blend at the upscaled size
        second = second.resize(first.size, Image.Resampling.LANCZOS)
    return Image.blend(first, second, visibility)
