"""A1111 img2img scripts' positional `script_args`, as API clients send them."""

from __future__ import annotations

from typing import Any

from sfumato.errors import UserError


def with_defaults(args: list[Any], defaults: tuple[Any, ...], title: str, names: str) -> list[Any]:
    """`args` padded with the script's defaults for the trailing ones a client left out (A1111's UI
    defaults); more arguments than the script takes is a UserError naming `script_args`."""
    if len(args) > len(defaults):
        raise UserError(
            f"script_args: {title} takes at most {len(defaults)} arguments ({names}), not {len(args)}",
            field="script_args",
        )
    return [*args, *defaults[len(args) :]]
