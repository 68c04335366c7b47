"""Prompt editing `[from:to:when]` and alternation `[a|b]`: which text to encode at which step.

`prompt_schedule` gives what A1111's `get_learned_conditioning_prompt_schedules` gives for one
prompt. A1111 parses with a lark Earley grammar; this is our own parser for the same language:

- no dependency (lark) for a grammar of six rules;
- linear time and no recursion, so 100 000 characters or 10 000 nested brackets are no problem
  (A1111's grammar is context-free, but its structures nest strictly, so one bracket stack decides
  every one of them);
- a deterministic answer where A1111's Earley parse is ambiguous: when a bracket structure is
  directly followed by a stray bracket or colon at top level (`[a:3]:`), lark's choice between
  "structure" and "all plain text" depends on Python's hash seed and varies from run to run; we
  always take the structure, which is what A1111 does whenever its answer is stable.

The language: at top level, text, `(...)`, `[...]` structures and stray `[ ] ( ) :` characters.
Inside a structure everything must nest: `(p)`, `(p:p)`, `[p]`, `[p:N]`, `[p:p:N]` (N a number,
blanks allowed around it) and `[p|p|...]`. A bracket that cannot be read as a structure is plain
text, as is every bracket around it. A `|` outside alternation, or a backslash at the end or before
a newline, makes A1111's parse fail; then the whole prompt is one plain text for all steps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sfumato.errors import UserError

# lark's SIGNED_NUMBER (ASCII digits), with the blanks the grammar allows around it.
_WHEN = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*")
_SPECIAL = re.compile(r"\\.|\\$|[][():|]", re.S)


@dataclass
class Edit:
    """`[before:after:when]`: `before` up to step `when` (inclusive), `after` from then on."""

    before: list[Piece]
    after: list[Piece]
    number: str
    when: int = 0


@dataclass
class Alternation:
    """`[a|b|c]`: option `(step - 1) % len(options)` at each step."""

    options: list[list[Piece]]


# A list piece is a bracketed sequence kept as one piece, so nesting never copies its contents.
Piece = str | list | Edit | Alternation


class _ParseFailed(Exception):
    """Where A1111's grammar rejects the prompt; the prompt is then used as plain text."""


@dataclass
class _Open:
    """A bracket not yet closed: its parts so far, split at `:` and `|`."""

    bracket: str
    parts: list[list[Piece]]
    separators: str = ""


def prompt_schedule(
    prompt: str, steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[list]:
    """`[[end_step, text], ...]` for `prompt`, as A1111's `get_learned_conditioning_prompt_schedules`.

    `text` is used up to and including `end_step`; the last entry ends at `steps` (`hires_steps`
    for the hires-fix pass). `when` in `[a:b:when]`: an integer is a step; a number with a dot is a
    fraction of the steps. In the hires pass (new scheduling), integers count on from the first
    pass (`when - steps`) and fractions from 1.0 (`(when - 1) * hires_steps`); with
    `use_old_scheduling`, any value below 1 is a fraction and the hires pass counts like the first.
    Entries are lists, as A1111 returns them; texts may repeat, as in A1111.
    """
    for name, value in (("steps", steps), ("hires_steps", hires_steps)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{name} must be a whole number of at least 1, got {value!r}", field=name)
    if hires_steps is None or use_old_scheduling:
        int_offset, float_offset, total = 0, 0.0, steps
    else:
        int_offset, float_offset, total = steps, 1.0, hires_steps
    try:
        pieces, edits, alternates = _parse(prompt)
    except _ParseFailed:
        return [[total, prompt]]

    ends = {total}
    for edit in edits:
        value = float(edit.number)
        if use_old_scheduling:
            value = value * total if value < 1 else value
        elif "." in edit.number:
            value = (value - float_offset) * total
        else:
            value = value - int_offset
        if not math.isfinite(value):
            raise UserError(f"prompt editing step {edit.number!r} is out of range")
        edit.when = min(total, int(value))
        if edit.when >= 1:
            ends.add(edit.when)
    if alternates:
        ends.update(range(1, total + 1))
    return [[step, _render(pieces, step)] for step in sorted(ends)]


def _parse(prompt: str) -> tuple[list[Piece], list[Edit], bool]:
    """The top-level pieces, every edit (reachable or not) and whether any alternation occurs."""
    top: list[Piece] = []
    stack: list[_Open] = []
    edits: list[Edit] = []
    alternates = False

    def target() -> list[Piece]:
        return stack[-1].parts[-1] if stack else top

    def give_up_open_brackets() -> None:
        """Open brackets that can no longer close as structures become plain text, with their `:`."""
        for frame in stack:
            if "|" in frame.separators:
                raise _ParseFailed
            top.append(frame.bracket)
            for i, part in enumerate(frame.parts):
                if i:
                    top.append(":")
                top.extend(part)
        stack.clear()

    position = 0
    for m in _SPECIAL.finditer(prompt):
        if m.start() > position:
            target().append(prompt[position : m.start()])
        position = m.end()
        token = m.group(0)
        if token[0] == "\\":
            if len(token) == 1 or token[1] == "\n":
                raise _ParseFailed
            target().append(token)
        elif token in "([":
            stack.append(_Open(token, [[]]))
        elif token in ":|":
            if stack:
                stack[-1].separators += token
                stack[-1].parts.append([])
            elif token == "|":
                raise _ParseFailed
            else:
                top.append(token)
        elif not stack:
            top.append(token)
        else:
            frame = stack.pop()
            closed = _close(frame, token)
            if closed is None:
                stack.append(frame)
                give_up_open_brackets()
                top.append(token)
            else:
                if isinstance(closed, Edit):
                    edits.append(closed)
                    closed = [closed]
                elif isinstance(closed, Alternation):
                    alternates = True
                    closed = [closed]
                target().extend(closed)
    if position < len(prompt):
        target().append(prompt[position:])
    give_up_open_brackets()
    return top, edits, alternates


def _close(frame: _Open, bracket: str) -> list[Piece] | Edit | Alternation | None:
    """The structure `frame` forms when closed by `bracket`, or None where the grammar has none."""
    seps, parts = frame.separators, frame.parts
    if frame.bracket == "(":
        if bracket != ")" or "|" in seps or len(seps) > 1:
            return None
        return ["(", parts[0], ":", parts[1], ")"] if seps else ["(", parts[0], ")"]
    if bracket != "]":
        return None
    if "|" in seps:
        return None if ":" in seps else Alternation(parts)
    if not seps:
        return ["[", parts[0], "]"]
    last = parts[-1]
    if len(seps) > 2 or not all(isinstance(p, str) for p in last):
        return None
    number = _WHEN.fullmatch("".join(last))  # type: ignore[arg-type]
    if number is None:
        return None
    return Edit(parts[0] if len(seps) == 2 else [], parts[-2], number.group(1))


def _render(pieces: list[Piece], step: int) -> str:
    """The text at `step`, walking nested edits with an explicit stack (no recursion limit)."""
    out: list[str] = []
    stack = [iter(pieces)]
    while stack:
        piece = next(stack[-1], None)
        if piece is None:
            stack.pop()
        elif isinstance(piece, str):
            out.append(piece)
        elif isinstance(piece, list):
            stack.append(iter(piece))
        elif isinstance(piece, Edit):
            stack.append(iter(piece.before if step <= piece.when else piece.after))
        else:
            stack.append(iter(piece.options[(step - 1) % len(piece.options)]))
    return "".join(out)
