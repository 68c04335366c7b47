"""`<kind:args>` tags (LoRA, hypernetwork, LyCORIS, ...) taken out of a prompt as A1111 does.

`extract_extra_networks` matches A1111's `extra_networks.parse_prompt` (regex `<(\\w+):([^>]+)>`,
tags removed, nothing else touched) and `ExtraNetworkCall` reads the arguments as A1111's
`ExtraNetworkParams` and its built-in Lora extension do.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from sfumato.errors import UserError

_KIND = re.compile(r"\w+")


@dataclass(frozen=True)
class ExtraNetworkCall:
    """One `<kind:item:item:...>` tag.

    `items` are the colon-separated arguments; an item of the form `key=value` (exactly one `=`)
    is named, any other item is positional, as in A1111's `ExtraNetworkParams`.
    """

    kind: str
    items: tuple[str, ...]
    positional: tuple[str, ...] = field(init=False)
    named: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        positional, named = [], {}
        for item in self.items:
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        object.__setattr__(self, "positional", tuple(positional))
        object.__setattr__(self, "named", named)

    @property
    def name(self) -> str:
        """The network's name: the first positional item."""
        if not self.positional:
            raise UserError(f"<{self.kind}:{':'.join(self.items)}> names no network")
        return self.positional[0]

    @property
    def te_multiplier(self) -> float:
        """Text-encoder weight: `te=` if given, else the second positional item, else 1.0."""
        value = self.named.get("te", self.positional[1] if len(self.positional) > 1 else None)
        return 1.0 if value is None else self._number(value, "weight")

    @property
    def unet_multiplier(self) -> float:
        """UNet weight: `unet=` if given, else the third positional item, else the te weight."""
        value = self.named.get("unet", self.positional[2] if len(self.positional) > 2 else None)
        return self.te_multiplier if value is None else self._number(value, "unet weight")

    @property
    def dyn_dim(self) -> int | None:
        """DyLoRA rank: `dyn=` if given, else the fourth positional item, else None (full rank)."""
        value = self.named.get("dyn", self.positional[3] if len(self.positional) > 3 else None)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise UserError(
                f"bad dyn dim {value!r} in <{self.kind}:{self.name}>: not a whole number"
            ) from None

    def _number(self, value: str, what: str) -> float:
        """A multiplier read with Python's float(), as A1111 reads it; finite or a UserError."""
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise UserError(f"bad {what} {value!r} in <{self.kind}:{self.name}>: not a finite number")
        return number


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkCall]]:
    """Remove every `<kind:args>` tag from `prompt`; return the rest and the tags in order.

    Same matches as A1111's `re.sub(r"<(\\w+):([^>]+)>", "", prompt)`, found by a scan that stays
    linear where that regex backtracks over a long unclosed tag. Text around a tag is left as it
    is (a tag between two commas leaves `, ,`), as in A1111.
    """
    kept: list[str] = []
    calls: list[ExtraNetworkCall] = []
    position = search = 0
    while (start := prompt.find("<", search)) >= 0:
        search = start + 1
        kind = _KIND.match(prompt, start + 1)
        if kind is None or not prompt.startswith(":", kind.end()):
            continue
        close = prompt.find(">", kind.end() + 1)
        if close < 0:
            break
        if close == kind.end() + 1:
            continue
        kept.append(prompt[position:start])
        calls.append(ExtraNetworkCall(kind.group(0), tuple(prompt[kind.end() + 1 : close].split(":"))))
        position = search = close + 1
    kept.append(prompt[position:])
    return "".join(kept), calls
