"""Saving images the way A1111 does: `outputs/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png`, infotext inside.

Writes go to a temporary file in the same folder and are renamed into place, so an interrupted or
failed save (a full disk) never leaves a half-written PNG or touches one that exists.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from PIL import Image

from sfumato.errors import UserError
from sfumato.output_files import output_temp_file
from sfumato.pnginfo import pnginfo_for

LEADING_NUMBER = re.compile(r"^(\d+)-")


def next_sequence_number(folder: Path) -> int:
    """One more than the largest `NNNNN-` prefix in the folder (A1111's numbering), 0 when empty."""
    numbers = (
        [int(m.group(1)) for p in folder.iterdir() if (m := LEADING_NUMBER.match(p.name))]
        if folder.is_dir()
        else []
    )
    return max(numbers, default=-1) + 1


def images_folder(outputs: Path, task: str, *, today: dt.date | None = None) -> Path:
    """`outputs/<task>-images/YYYY-MM-DD` (task: txt2img, img2img, extras)."""
    return outputs / f"{task}-images" / (today or dt.date.today()).isoformat()


def save_png(image: Image.Image, folder: Path, seed: int | None, parameters: str) -> Path:
    """Save under the next free `NNNNN-SEED.png` (`NNNNN.png` without a seed: Extras), with
    `parameters` in a tEXt/iTXt chunk."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = output_temp_file(folder, ".png")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                image.save(f, format="PNG", pnginfo=pnginfo_for(parameters))
            target = _claim_name(tmp, folder, seed)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"could not save the image in {folder}: {exc.strerror or exc}") from exc
    return target


def _claim_name(tmp: Path, folder: Path, seed: int | None) -> Path:
    """Give the finished file its numbered name without ever replacing an existing one: a hard link
    fails if the name is taken (two writers at once), and we try the next number."""
    number = next_sequence_number(folder)
    while True:
        target = folder / (f"{number:05d}-{seed}.png" if seed is not None else f"{number:05d}.png")
        try:
            os.link(tmp, target)
            return target
        except FileExistsError:
            number += 1
        except OSError:  # no hard links on this filesystem (FAT, some network mounts)
            if not target.exists():
                os.replace(tmp, target)
                return target
            number += 1
