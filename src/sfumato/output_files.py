"""Temporary files that become the user's outputs by a rename (images, animations, videos).

Why: `tempfile.mkstemp` makes files only their owner can read (0600), and the rename keeps that mode,
so saved images could not be read by a web server or another user of a shared folder, as A1111's can.
Outputs get the mode a plain `open()` would give them: 0666 less the process's umask.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which must not race other threads.
OUTPUT_MODE = 0o666 & ~_umask()


def output_temp_file(folder: Path, suffix: str) -> tuple[int, str]:
    """`mkstemp` in `folder` (the rename then stays on one filesystem), with the output mode."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".saving-", suffix=suffix)
    if hasattr(os, "fchmod"):  # not on Windows before Python 3.13, where files have no such mode
        os.fchmod(fd, OUTPUT_MODE)
    return fd, name
