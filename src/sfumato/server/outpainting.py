"""A1111's "Poor man's outpainting" img2img script, as its API clients call it.

A client sends `script_name: "Poor man's outpainting"` and `script_args: [pixels, mask_blur,
inpainting_fill, directions]` (A1111's order: pixels to expand, mask blur, masked content as an index
0-3 = fill/original/latent noise/latent nothing, and a list of "left", "right", "up", "down"). Missing
trailing arguments take A1111's UI defaults (128, 4, fill, all four sides).

What matches A1111: the canvas grows on the chosen sides and each grown axis is rounded up to a
multiple of 64, the extra pixels shared between that axis' two sides as A1111 shares them; the repaint
mask covers the new margins and reaches `2 × mask_blur` pixels into the picture on grown sides, with
the mask blurred by `2 × mask_blur`; inpaint area is "whole picture". The image comes back at the
canvas size.

Where we differ, on purpose: A1111 cuts the canvas into tiles of the request's width × height and
repaints the tiles that touch a margin; we repaint the whole canvas in one pass (one coherent picture,
no seams between tiles), so `width`/`height` are replaced by the canvas size. The new margins start as
the picture's stretched border pixels (`sfumato.imaging.outpaint`, "edge") instead of black, which
matters for masked content "original".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from sfumato.errors import UserError
from sfumato.imaging.outpaint import Margins, extend_canvas
from sfumato.request import MAX_SIDE
from sfumato.server.script_args import with_defaults

SCRIPT_TITLE = "Poor man's outpainting"
DIRECTIONS = ("left", "right", "up", "down")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
DEFAULTS: tuple[Any, ...] = (128, 4, 0, list(DIRECTIONS))
MAX_PIXELS = 2048
MAX_BLUR = 64


def is_outpainting(script_name: str | None) -> bool:
    """A1111 finds scripts by their title, case-insensitively."""
    return bool(script_name) and script_name.strip().lower() == SCRIPT_TITLE.lower()


@dataclass(frozen=True)
class OutpaintArgs:
    pixels: int
    mask_blur: int
    inpainting_fill: int
    directions: frozenset[str]


def _integer(value: Any, index: int, low: int, high: int, what: str) -> int:
    field = f"script_args.{index}"
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise UserError(f"{field}: {what} must be a whole number, not {value!r}", field=field)
    if not low <= int(value) <= high:
        raise UserError(f"{field}: {what} must be between {low} and {high}, not {value!r}", field=field)
    return int(value)


def parse_script_args(args: list[Any]) -> OutpaintArgs:
    """The script's arguments in A1111's order, checked; a bad one is a UserError naming it."""
    pixels, blur, fill, directions = with_defaults(
        args, DEFAULTS, SCRIPT_TITLE, "pixels, mask_blur, inpainting_fill, direction"
    )
    fill_index = MASKED_CONTENT.index(fill) if isinstance(fill, str) and fill in MASKED_CONTENT else fill
    if isinstance(directions, str):
        directions = [part.strip() for part in directions.split(",") if part.strip()]
    if (
        not isinstance(directions, list)
        or not directions
        or not all(isinstance(d, str) and d in DIRECTIONS for d in directions)
    ):
        raise UserError(
            f"script_args.3: the outpainting direction is a list of {', '.join(DIRECTIONS)}, not {directions!r}",
            field="script_args.3",
        )
    return OutpaintArgs(
        pixels=_integer(pixels, 0, 1, MAX_PIXELS, "pixels to expand"),
        mask_blur=_integer(blur, 1, 0, MAX_BLUR, "mask blur"),
        inpainting_fill=_integer(fill_index, 2, 0, len(MASKED_CONTENT) - 1, "masked content"),
        directions=frozenset(directions),
    )


def _axis(size: int, before: int, after: int) -> tuple[int, int]:
    """A grown axis' two margins after rounding its new length up to a multiple of 64 (A1111's share)."""
    if not before and not after:
        return 0, 0
    target = math.ceil((size + before + after) / 64) * 64
    extra = target - size
    first = before * extra // (before + after) if before else 0
    return first, extra - first


def margins_for(image: Image.Image, args: OutpaintArgs) -> Margins:
    n = args.pixels
    left, right = _axis(image.width, n * ("left" in args.directions), n * ("right" in args.directions))
    top, bottom = _axis(image.height, n * ("up" in args.directions), n * ("down" in args.directions))
    margins = Margins(left=left, top=top, right=right, bottom=bottom)
    if image.width + left + right > MAX_SIDE or image.height + top + bottom > MAX_SIDE:
        raise UserError(
            f"script_args.0: the outpainted canvas would be larger than {MAX_SIDE}", field="script_args.0"
        )
    return margins


def outpaint(image: Image.Image, args: OutpaintArgs) -> tuple[Image.Image, Image.Image, dict[str, Any]]:
    """The canvas (init image), its repaint mask, and the request fields the script sets."""
    margins = margins_for(image, args)
    canvas, mask = extend_canvas(image, margins, fill="edge")
    reach = 2 * args.mask_blur  # on every grown side the mask reaches this far into the picture
    if reach:
        draw = ImageDraw.Draw(mask)
        right, bottom = canvas.width - margins.right, canvas.height - margins.bottom
        bands = (
            (margins.left, (margins.left, 0, margins.left + reach - 1, canvas.height - 1)),
            (margins.right, (right - reach, 0, right - 1, canvas.height - 1)),
            (margins.top, (0, margins.top, canvas.width - 1, margins.top + reach - 1)),
            (margins.bottom, (0, bottom - reach, canvas.width - 1, bottom - 1)),
        )
        for grown, box in bands:
            if grown:
                draw.rectangle(box, fill=255)
    fields = {
        "width": canvas.width,
        "height": canvas.height,
        "mask_blur": reach,
        "inpainting_fill": args.inpainting_fill,
        "inpaint_full_res": False,
        "inpainting_mask_invert": 0,
        "resize_mode": 0,
    }
    return canvas, mask, fields
