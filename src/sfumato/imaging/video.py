"""Video files (MP4, MOV, WebM, MKV) for gif2gif, through the optional PyAV package (FFmpeg's libraries,
bundled in its wheels): frames with their durations in, frames with the same timing out.

Timing is kept frame by frame (presentation times in milliseconds), so variable-frame-rate phone videos
keep their rhythm; the last frame, whose duration containers do not reliably record, shows as long as
the one before it. Audio is not carried over: the frames change, so the sound would no longer match.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image

from sfumato.errors import UserError
from sfumato.imaging.files import MAX_PIXELS
from sfumato.output_files import output_temp_file

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi")
MAX_FRAMES = 3000  # about two minutes at 25 fps; each frame is one img2img job
CODECS = {".webm": ("libvpx-vp9", "libvpx"), ".mkv": ("libx264", "mpeg4")}
DEFAULT_CODECS = ("libx264", "mpeg4")  # H.264 where FFmpeg has it, MPEG-4 part 2 otherwise
MS = Fraction(1, 1000)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise UserError("videos need the optional PyAV package: pip install av", field="animation") from exc
    return av


def read_video(path: Path, field: str) -> tuple[list[Image.Image], list[int]]:
    """Every frame of the first video stream as RGB, and each frame's duration in milliseconds."""
    av = _av()
    frames: list[Image.Image] = []
    times: list[float] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{field}: {path} has no video stream", field=field)
            stream = container.streams.video[0]
            if stream.width * stream.height > MAX_PIXELS:
                raise UserError(
                    f"{field}: frames of {stream.width}×{stream.height} are larger than allowed", field=field
                )
            rate = float(stream.average_rate or 25)
            for frame in container.decode(stream):
                if len(frames) == MAX_FRAMES:
                    raise UserError(
                        f"{field}: {path} has more than {MAX_FRAMES} frames; cut it first", field=field
                    )
                frames.append(frame.to_image().convert("RGB"))
                times.append(float(frame.time) if frame.time is not None else len(times) / rate)
    except UserError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"{field}: {path} cannot be read as a video ({exc})", field=field) from exc
    if not frames:
        raise UserError(f"{field}: {path} holds no frames", field=field)
    # containers do not reliably record how long the last frame shows: as long as the one before it
    last = times[-1] - times[-2] if len(times) > 1 else 1 / rate
    ends = [*times[1:], times[-1] + last]
    durations = [max(1, round((end - start) * 1000)) for start, end in zip(times, ends, strict=True)]
    return frames, durations


def _even(image: Image.Image) -> Image.Image:
    """yuv420p needs even sides: drop a last odd row/column (one pixel, never a visible change)."""
    width, height = image.width - image.width % 2, image.height - image.height % 2
    return image if (width, height) == image.size else image.crop((0, 0, width, height))


def write_video(frames: list[Image.Image], durations: list[int], path: Path) -> Path:
    """The frames as a video at `path` (its suffix picks the container), each shown for its duration;
    written to a temporary file first so a failed write leaves nothing half-made."""
    av = _av()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = output_temp_file(path.parent, path.suffix)
    os.close(fd)
    first = _even(frames[0])
    mean_ms = sum(durations) / len(durations)
    try:
        with av.open(tmp, mode="w") as container:
            stream = _video_stream(
                av, container, path.suffix.lower(), Fraction(round(1000 / mean_ms * 1000), 1000)
            )
            stream.width, stream.height, stream.pix_fmt = first.width, first.height, "yuv420p"
            stream.time_base = stream.codec_context.time_base = MS  # keep each frame's own time
            start = 0
            for image, duration in zip(frames, durations, strict=True):
                frame = av.VideoFrame.from_image(_even(image).resize(first.size).convert("RGB"))
                frame.pts, frame.time_base = start, MS
                start += duration
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        os.replace(tmp, path)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"could not save the video {path}: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _video_stream(av: Any, container: Any, suffix: str, rate: Fraction) -> Any:
    for codec in CODECS.get(suffix, DEFAULT_CODECS):
        try:
            return container.add_stream(codec, rate=rate)
        except (av.error.FFmpegError, ValueError):  # not built into this FFmpeg: try the next
            continue
    raise UserError(f"no video encoder for {suffix} in this FFmpeg build")
