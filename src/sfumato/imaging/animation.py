"""Writing animations (GIF, APNG, WebP, and videos through `imaging.video`) with the frame durations
and loop count of their source."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from sfumato.errors import UserError
from sfumato.imaging.video import is_video, write_video
from sfumato.output_files import output_temp_file

FORMATS = {".gif": "GIF", ".png": "PNG", ".apng": "PNG", ".webp": "WEBP"}


def save_animation(frames: list[Image.Image], durations: list[int], loop: int, path: Path) -> Path:
    """Save `frames` as one animation at `path` (its suffix picks the format, GIF when unknown),
    written to a temporary file first so a failed write leaves nothing half-made."""
    if not frames:
        raise UserError("no frames to save", field="animation")
    if is_video(path):
        return write_video(frames, durations, path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        path, fmt = path.with_suffix(".gif"), "GIF"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = output_temp_file(path.parent, path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            frames[0].save(
                f,
                format=fmt,
                save_all=True,
                append_images=frames[1:],
                duration=durations[: len(frames)],
                loop=loop,
                disposal=2 if fmt == "GIF" else 0,
            )
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"could not save the animation {path}: {exc.strerror or exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
