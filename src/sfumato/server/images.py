"""Images in and out of the API: base64 (with or without a `data:` URL prefix) with size limits.

An upload is refused before it is decoded when its bytes exceed `MAX_UPLOAD_BYTES`, and before its
pixels are allocated when its header announces more than `MAX_PIXELS` (`sfumato.imaging.files`); an
undecodable payload is a UserError naming the field, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image

from sfumato.errors import UserError
from sfumato.imaging.files import open_image
from sfumato.pnginfo import pnginfo_for

MAX_UPLOAD_BYTES = 50 << 20
DATA_URL = re.compile(r"^data:[\w/+.-]+(;[\w=-]+)*;base64,", re.IGNORECASE)


def decode_base64(data: str, field: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise UserError(f"{field}: expected a base64-encoded image", field=field)
    payload = DATA_URL.sub("", data.strip(), count=1)
    if len(payload) * 3 // 4 > MAX_UPLOAD_BYTES:
        raise UserError(f"{field}: image is larger than {MAX_UPLOAD_BYTES >> 20} MiB", field=field)
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise UserError(f"{field}: not valid base64 ({exc})", field=field) from exc


def decode_image(data: str, field: str) -> tuple[Image.Image, bytes]:
    """The image of a base64 field, and its raw bytes (PNG Info reads metadata from those)."""
    raw = decode_base64(data, field)
    return open_image(raw, field), raw


def encode_png(image: Image.Image, parameters: str | None = None) -> str:
    """Base64 PNG (no data-URL prefix, as A1111 returns), with the infotext inside when given."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo_for(parameters) if parameters else None)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
