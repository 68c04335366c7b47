"""A1111's "SD upscale" img2img script, as its API clients call it.

`script_name: "SD upscale"` with `script_args: [info, overlap, upscaler_index, scale_factor]` (A1111's
order: an unused info text, the tile overlap in pixels, the upscaler as an index into the `/upscalers`
list, and the scale). Missing trailing arguments take A1111's defaults (64, the first upscaler, 2); an
upscaler may also be given by name. The job runs `tasks.sd_upscale` with the request's width × height
as the tile size.
"""

from __future__ import annotations

from typing import Any

from sfumato.errors import UserError
from sfumato.server.script_args import with_defaults
from sfumato.tasks.sd_upscale import SdUpscale

SCRIPT_TITLE = "SD upscale"
DEFAULTS: tuple[Any, ...] = ("", 64, 0, 2.0)


def is_sd_upscale(script_name: str | None) -> bool:
    return bool(script_name) and script_name.strip().lower() == SCRIPT_TITLE.lower()


def _number(value: Any, index: int, low: float, high: float, what: str) -> float:
    field = f"script_args.{index}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise UserError(
            f"{field}: {what} must be a number from {low:g} to {high:g}, not {value!r}", field=field
        )
    return float(value)


def parse_script_args(args: list[Any], upscalers: list[str]) -> SdUpscale:
    """The script's settings from A1111's arguments; a bad one is a UserError naming it."""
    _, overlap, upscaler, scale = with_defaults(
        args, DEFAULTS, SCRIPT_TITLE, "info, overlap, upscaler_index, scale_factor"
    )
    if isinstance(upscaler, str) and upscaler in upscalers:
        name = upscaler
    else:
        index = int(_number(upscaler, 2, 0, len(upscalers) - 1, "upscaler_index (into /sdapi/v1/upscalers)"))
        if index != upscaler:
            raise UserError(
                f"script_args.2: upscaler_index must be a whole number, not {upscaler!r}",
                field="script_args.2",
            )
        name = upscalers[index]
    return SdUpscale(
        upscaler=name,
        scale=_number(scale, 3, 1, 8, "scale_factor"),
        overlap=int(_number(overlap, 1, 0, 512, "overlap")),
    )
