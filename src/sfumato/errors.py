"""Errors that reach the user as one clear message.

Every failure the user can fix (bad input, a missing or corrupt file, an unknown name) is a
`UserError`; the CLI prints it as one line on stderr and exits 2, the API turns it into a 4xx.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem in what the user asked for or gave us; the message says what and where."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFoundError(UserError):
    """An id that names nothing (a job or image that does not exist): HTTP 404 in the API."""


class ModelFileError(UserError):
    """A model file that is missing, truncated, corrupt, unsafe or of an unknown architecture."""


class InterruptedByUser(Exception):
    """Raised inside the sampling loop when the user stops a job; never an error to report."""


class SkippedByUser(Exception):
    """Raised inside the sampling loop when the user skips the current batch (A1111's Skip)."""


def unknown_name(kind: str, name: str, known: Iterable[str], *, field: str | None = None) -> UserError:
    """A `UserError` for a misspelt name, suggesting the close matches."""
    known = list(known)
    lowered = {k.lower(): k for k in known}
    close = [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = "" if close or len(known) > 40 else f" (known: {', '.join(known) or 'none'})"
    return UserError(f"unknown {kind} {name!r}{hint}{listing}", field=field)
