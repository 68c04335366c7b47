"""gif2gif through the job API: `POST /sfumato/v1/jobs` with `kind: "gif2gif"` and an img2img body
whose `animation` is the file (GIF, APNG, WebP; MP4/MOV/WebM/MKV where PyAV is installed) as base64.

A1111 has no such endpoint (its gif2gif is an extension's script), so the body is img2img's plus the
animation. The file travels in the job, so a queued job survives a restart; frames already saved by a
crashed run are made again, not saved again. The job's images are the frames in order, then the
animation itself (`GET /sfumato/v1/jobs/ID/images/N`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import Field

from sfumato.errors import UserError
from sfumato.imaging.animation import FORMATS
from sfumato.imaging.files import frames_from_bytes
from sfumato.imaging.video import VIDEO_SUFFIXES
from sfumato.request import Img2ImgRequest
from sfumato.server.a1111 import Img2ImgBody, generation_fields, unsupported_features
from sfumato.server.state import ServerState

SUFFIXES = (*FORMATS, *VIDEO_SUFFIXES)


class Gif2GifBody(Img2ImgBody):
    animation: str = Field("", description="the animation file as base64 (a data: URL prefix is accepted)")
    animation_format: str = Field("gif", description="its type: gif, png (APNG), webp, mp4, mov, webm, mkv")


def _suffix(name: str) -> str:
    suffix = "." + name.lower().lstrip(".")
    if suffix not in SUFFIXES:
        raise UserError(
            f"animation_format: {name!r} is not one of {', '.join(s[1:] for s in SUFFIXES)}",
            field="animation_format",
        )
    return suffix


def _bytes(data: str) -> bytes:
    text = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UserError("animation: not valid base64", field="animation") from exc


def gif2gif_job_request(body: Gif2GifBody, state: ServerState) -> dict[str, Any]:
    unsupported_features(body)
    if not body.animation:
        raise UserError("animation: the animation file is needed (base64)", field="animation")
    suffix = _suffix(body.animation_format)
    raw = _bytes(body.animation)
    frames_from_bytes(raw, suffix, "animation")  # a file that cannot be read fails now, not in the queue
    generation = generation_fields(body, state, Img2ImgRequest)
    if generation["batch_size"] != 1 or generation["n_iter"] != 1:
        raise UserError(
            "batch_size: gif2gif makes one image per frame (batch size and count 1)", field="batch_size"
        )
    return {
        "generation": generation,
        "inputs": {"animation": base64.b64encode(raw).decode(), "suffix": suffix},
    }
