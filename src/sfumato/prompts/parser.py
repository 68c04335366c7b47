"""Attention weights and AND composition in A1111's prompt language.

`parse_attention` gives the same list as A1111's `parse_prompt_attention` and `split_and` the same
sub-prompts and weights as its `get_multicond_prompt_list`, so a prompt copied from civitai or a PNG
means the same thing here. Both run in linear time on any string and raise only `UserError`.
"""

from __future__ import annotations

import math
import re

from sfumato.errors import UserError

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# One token of the attention language, tried in A1111's order: an escape (a backslash not followed
# by a bracket or backslash is a lone escape that drops out), an opening bracket, `:weight)` closing
# a round bracket, a closing bracket, then a run of text or a lone colon.
_ATTENTION_TOKEN = re.compile(
    r"""
      \\(?P<escaped>[()\[\]\\])?
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | (?P<close>[)\]])
    | [^\\()\[\]:]+
    | :
    """,
    re.X,
)
_BREAK = re.compile(r"\bBREAK\b")
_BLANKS = re.compile(r"\s*")
_AND = re.compile(r"\bAND\b")
_AND_WEIGHT = re.compile(r"[-+]?(?:\d+\.?|\d*\.\d+)")

# Each closing bracket multiplies every span since its opening one, in order; a prompt needing more
# multiplications than this is refused rather than taking quadratic time (see parse_attention).
MAX_WEIGHT_UPDATES = 4_000_000


def parse_attention(text: str) -> list[list]:
    """Split `text` into `[text, weight]` pairs exactly as A1111's `parse_prompt_attention` does.

    `(x)` multiplies by 1.1, `[x]` divides by 1.1, `(x:w)` multiplies by `w`; unclosed brackets
    apply to the end; `\\(` `\\)` `\\[` `\\]` `\\\\` are literals; `BREAK` gives `["BREAK", -1]` (times
    the brackets around it, as in A1111); equal neighbours merge; the empty prompt gives
    `[["", 1.0]]`. Pairs are lists, as A1111 returns them, so results compare equal to A1111's.

    Weights are multiplied in A1111's order so floats match bit for bit. Raises `UserError` for a
    weight A1111 cannot read (`(a:1.2.3)`, where A1111 crashes), for a weight that is not finite,
    and for a prompt needing over `MAX_WEIGHT_UPDATES` multiplications (A1111 takes quadratic time).
    """
    # Spans appended with no bracket in between always share a weight, so weights live per group.
    groups: list[float] = []
    spans: list[tuple[str, int, bool]] = []  # text, group, is a BREAK (weight negated)
    round_open: list[int] = []
    square_open: list[int] = []
    new_group = True
    budget = MAX_WEIGHT_UPDATES

    def add(piece: str, is_break: bool = False) -> None:
        nonlocal new_group
        if new_group:
            groups.append(1.0)
            new_group = False
        spans.append((piece, len(groups) - 1, is_break))

    def multiply(start: int, multiplier: float) -> None:
        nonlocal new_group, budget
        budget -= len(groups) - start
        if budget < 0:
            raise UserError("prompt has too many nested emphasis brackets for its length")
        groups[start:] = [w * multiplier for w in groups[start:]]
        new_group = True

    def mark() -> int:
        nonlocal new_group
        new_group = True
        return len(groups)

    for m in _ATTENTION_TOKEN.finditer(text):
        token, weight, close = m.group(0), m.group("weight"), m.group("close")
        if token[0] == "\\":
            add(m.group("escaped") or "")
        elif m.group("open"):
            (round_open if token == "(" else square_open).append(mark())
        elif weight is not None and round_open:
            multiply(round_open.pop(), _explicit_weight(weight, token))
        elif close == ")" and round_open:
            multiply(round_open.pop(), ROUND_MULTIPLIER)
        elif close == "]" and square_open:
            multiply(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_split_break(token)):
                if i:
                    add("BREAK", is_break=True)
                add(part)
    for start in round_open:
        multiply(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply(start, SQUARE_MULTIPLIER)

    result: list[list] = []
    for piece, group, is_break in spans:
        weight = -groups[group] if is_break else groups[group]
        if not math.isfinite(weight):
            raise UserError(f"attention weight around {piece[:40]!r} is out of range ({weight})")
        if result and result[-1][1] == weight:
            result[-1][0] += piece
        else:
            result.append([piece, weight])
    return result or [["", 1.0]]


def _split_break(text: str) -> list[str]:
    """Split at the word BREAK and the blanks around it, as A1111's regex split, in linear time.

    Each BREAK takes the blanks before it (back to the previous match) and after it.
    """
    parts, start = [], 0
    for m in _BREAK.finditer(text):
        end = m.start()
        while end > start and text[end - 1].isspace():
            end -= 1
        parts.append(text[start:end])
        start = _BLANKS.match(text, m.end()).end()
    parts.append(text[start:])
    return parts


def _explicit_weight(number: str, token: str) -> float:
    """The `w` of `(x:w)`; A1111 accepts any run of digits and dots here and crashes on a bad one."""
    try:
        return float(number)
    except ValueError:
        raise UserError(f"bad attention weight {token!r}: {number!r} is not a number") from None


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split a composable prompt into `(sub-prompt, weight)` as A1111's `get_multicond_prompt_list`.

    The separator is the word `AND` (regex `\\bAND\\b`: no spaces needed, `ANDROID` is no separator).
    Each part may end in `:weight` (`a cat :1.2`), with digits and at most one dot; the weight and
    trailing whitespace are cut from the text, leading whitespace stays, and no weight means 1.0.
    Written without A1111's backtracking regex, whose lazy match is quadratic on long whitespace.
    """
    result = []
    for part in _AND.split(prompt):
        text, weight = part.rstrip(), 1.0
        colon = text.rfind(":")
        if colon >= 0:
            number = text[colon + 1 :].lstrip()
            if _AND_WEIGHT.fullmatch(number):
                text, weight = text[:colon].rstrip(), float(number)
                if not math.isfinite(weight):
                    raise UserError(f"AND weight {number[:40]!r} is out of range")
        result.append((text, weight))
    return result
