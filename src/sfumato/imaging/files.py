"""Reading images users hand us (files, uploads) without trusting them.

An image is refused before its pixels are allocated when its header announces more than `MAX_PIXELS`
(a "decompression bomb"), and decoded fully at once so a truncated file fails here with one clear
message naming the field, not later inside a task.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageSequence, UnidentifiedImageError

from sfumato.errors import UserError

MAX_PIXELS = 8192 * 8192


def _check_size(image: Image.Image, field: str, label: str) -> None:
    if image.width * image.height > MAX_PIXELS:
        raise UserError(
            f"{label}: image of {image.width}×{image.height} pixels is larger than allowed "
            f"({MAX_PIXELS:,} pixels)",
            field=field,
        )


def open_image(raw: bytes, field: str, label: str | None = None) -> Image.Image:
    """Decode image bytes fully (so a truncated file fails here), refusing oversized ones. Messages
    start with `label` (default: the field's name)."""
    label = label or field
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            _check_size(image, field, label)
            image.load()
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:  # fmt: skip
        raise UserError(f"{label}: not a readable image ({exc})", field=field) from exc
    return image


def read_image(path: Path, field: str) -> Image.Image:
    """`open_image` of a file, with a missing or unreadable file as one clear message."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{field}: cannot read {path}: {exc.strerror or exc}", field=field) from exc
    return open_image(raw, field, f"{field} ({path})")


def read_frames(path: Path, field: str) -> tuple[list[Image.Image], list[int], int]:
    """Every frame of an animated GIF/APNG/WebP or a video (a still image is one frame): the frames as
    RGB, each frame's duration in ms, and the loop count (0 = forever; videos do not loop)."""
    from sfumato.imaging.video import is_video, read_video  # PyAV, optional: only for videos

    if is_video(Path(path)):
        frames, durations = read_video(Path(path), field)
        return frames, durations, 0
    image = read_image(path, field)
    frames, durations = [], []
    try:
        for frame in ImageSequence.Iterator(image):
            frames.append(frame.convert("RGB"))
            durations.append(int(frame.info.get("duration", image.info.get("duration", 100)) or 100))
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(
            f"{field}: frame {len(frames)} of {path} cannot be read ({exc})", field=field
        ) from exc
    return frames, durations, int(image.info.get("loop", 0) or 0)


MAX_ANIMATION_FRAMES = 1000  # each frame is one img2img job


def frames_from_bytes(raw: bytes, suffix: str, field: str) -> tuple[list[Image.Image], list[int], int]:
    """`read_frames` of an upload (through a temporary file: videos need one), with a frame limit."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(raw)
        frames, durations, loop = read_frames(path, field)
    if len(frames) > MAX_ANIMATION_FRAMES:
        raise UserError(f"{field}: {len(frames)} frames, more than {MAX_ANIMATION_FRAMES}", field=field)
    return frames, durations, loop
