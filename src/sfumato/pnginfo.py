"""Read the generation metadata that image files carry, whichever tool wrote them.

- A1111 / sfumato: PNG text chunk ``parameters`` (tEXt, or iTXt when not latin-1); JPEG and WebP:
  EXIF UserComment, which A1111 writes with piexif as ``b"UNICODE\\0"`` + UTF-16 (big-endian; some
  tools write little-endian) and others as ``b"ASCII\\0\\0\\0"`` + text.
- ComfyUI: ``prompt`` (API graph JSON) and ``workflow`` (UI graph JSON); in its WebP files, EXIF
  Make/Model tags holding ``"workflow:{...}"`` / ``"prompt:{...}"``.
- InvokeAI: ``invokeai_metadata`` / ``invokeai_graph`` (v3+), ``sd-metadata`` / ``Dream`` (v2).
- NovelAI: ``Software`` = "NovelAI", ``Comment`` (JSON), ``Description`` (the prompt), ``Source``;
  like A1111 we also give such images an infotext made from them.

Only Pillow is used. Any file we cannot read is a `UserError` naming it; nothing else escapes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin

from sfumato import infotext
from sfumato.errors import UserError

__all__ = ["ImageMetadata", "as_json", "as_text", "pnginfo_for", "read_metadata"]

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_EXIF_TEXT_TAGS = {0x010E: "ImageDescription", 0x010F: "Make", 0x0110: "Model", 0x0131: "Software"}
_UNICODE_PREFIX = b"UNICODE\0"
_ASCII_PREFIX = b"ASCII\0\0\0"
_JIS_PREFIX = b"JIS\0\0\0\0\0"
_PNG_END = b"\0\0\0\0IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC

_INVOKEAI_KEYS = ("invokeai_metadata", "invokeai_graph", "sd-metadata", "Dream")
_NOVELAI_KEYS = ("Comment", "Description", "Software", "Source", "Title", "Generation time")
# Pillow `info` entries that are image properties, not metadata text (A1111 skips the same ones).
_NOT_METADATA = {
    "jfif",
    "jfif_version",
    "jfif_unit",
    "jfif_density",
    "dpi",
    "exif",
    "loop",
    "background",
    "timestamp",
    "duration",
    "progressive",
    "progression",
    "icc_profile",
    "chromaticity",
    "photoshop",
    "adobe",
    "adobe_transform",
    "transparency",
    "gamma",
    "srgb",
    "aspect",
    "interlace",
    "compression",
    "mp",
}
# NovelAI sampler names -> A1111 names (A1111 looks them up among its samplers' aliases).
_NOVELAI_SAMPLERS = {
    "k_euler_ancestral": "Euler a",
    "k_euler_a": "Euler a",
    "k_euler": "Euler",
    "k_lms": "LMS",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_ancestral": "DPM2 a",
    "k_dpm_2_a": "DPM2 a",
    "k_dpmpp_2s_ancestral": "DPM++ 2S a",
    "k_dpmpp_2s_a": "DPM++ 2S a",
    "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_sde": "DPM++ SDE",
    "k_dpmpp_2m_sde": "DPM++ 2M SDE",
    "k_dpm_fast": "DPM fast",
    "k_dpm_ad": "DPM adaptive",
    "ddim": "DDIM",
    "plms": "PLMS",
}


@dataclasses.dataclass
class ImageMetadata:
    """Everything an image says about how it was made.

    `parameters` is the A1111 infotext (from PNG text, EXIF UserComment, a JPEG/GIF comment, or built
    from NovelAI's chunks; `parameters_source` says which) and `parsed` its `infotext.parse`.
    JSON chunks are parsed when valid and kept as text when not.
    """

    source: str
    format: str | None
    size: tuple[int, int]
    parameters: str | None = None
    parameters_source: str | None = None
    parsed: dict[str, str] | None = None
    comfy_prompt: Any = None
    comfy_workflow: Any = None
    invokeai: dict[str, Any] | None = None
    novelai: dict[str, Any] | None = None
    other: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def has_generation_data(self) -> bool:
        return any(
            x is not None
            for x in (self.parameters, self.comfy_prompt, self.comfy_workflow, self.invokeai, self.novelai)
        )


# --- reading ---------------------------------------------------------------------------------------


def read_metadata(source: str | os.PathLike | bytes) -> ImageMetadata:
    """Read the generation metadata of an image file (path) or image data (bytes).

    Raises `UserError` naming the file when it is missing, unreadable, not an image, or truncated.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = "image data"
        data = bytes(source)
    else:
        name = os.fspath(source)
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        try:
            with open(name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise UserError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise UserError(f"{name}: is a directory, not an image file") from None
        except OSError as e:
            raise UserError(f"{name}: cannot read the file ({e.strerror or e})") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            # Loading decodes the pixels: a truncated file fails here rather than being half-read,
            # and PNG text chunks written after the image data become visible.
            im.load()
            if im.format == "PNG" and _PNG_END not in data:
                # Pillow reads the pixels of a PNG cut off after its image data without complaint.
                raise UserError(f"{name}: the PNG file is truncated (it has no end chunk)")
            return _extract(im, name)
    except UserError:
        raise
    except Image.UnidentifiedImageError:
        raise UserError(f"{name}: not an image file we can read") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{name}: image too large to read safely ({e})") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        reason = str(e) or type(e).__name__
        raise UserError(
            f"{name}: cannot read the image, the file is damaged or truncated ({reason})"
        ) from None


def _extract(im: Image.Image, name: str) -> ImageMetadata:
    meta = ImageMetadata(source=name, format=im.format, size=(im.width, im.height))
    texts = _text_chunks(im)

    exif = _read_exif(im)
    user_comment = exif.pop("UserComment", None)

    if texts.get("parameters"):
        meta.parameters, meta.parameters_source = texts.pop("parameters"), "parameters"
    elif user_comment:
        meta.parameters, meta.parameters_source = user_comment, "exif"
    elif texts.get("comment"):  # JPEG COM / GIF comment; A1111 reads an infotext from it too
        meta.parameters, meta.parameters_source = texts.pop("comment"), "comment"
    texts.pop("parameters", None)

    # ComfyUI's WebP/animated saves put "prompt:{json}" / "workflow:{json}" into EXIF text tags.
    for tag_name in ("Make", "Model", "ImageDescription"):
        value = exif.get(tag_name)
        for key in ("prompt", "workflow"):
            if value and value.startswith(key + ":") and key not in texts:
                texts[key] = value[len(key) + 1 :]
                del exif[tag_name]
                break
    for tag_name, value in exif.items():
        texts.setdefault(tag_name, value)

    if "prompt" in texts:
        meta.comfy_prompt = _json_or_text(texts.pop("prompt"))
    if "workflow" in texts:
        meta.comfy_workflow = _json_or_text(texts.pop("workflow"))

    invokeai = {key: _json_or_text(texts.pop(key)) for key in _INVOKEAI_KEYS if key in texts}
    meta.invokeai = invokeai or None

    if texts.get("Software", "").startswith("NovelAI"):
        meta.novelai = {key: texts.pop(key) for key in _NOVELAI_KEYS if key in texts}
        if isinstance(meta.novelai.get("Comment"), str):
            meta.novelai["Comment"] = _json_or_text(meta.novelai["Comment"])
        if meta.parameters is None:
            built = _novelai_infotext(meta.novelai, im.width, im.height)
            if built is not None:
                meta.parameters, meta.parameters_source = built, "novelai"

    meta.other = texts
    if meta.parameters is not None:
        meta.parsed = infotext.parse(meta.parameters)
    return meta


def _text_chunks(im: Image.Image) -> dict[str, str]:
    """The textual metadata entries of an image, as str."""
    raw: Mapping[str, Any] = getattr(im, "text", None) or {}  # PNG: tEXt, zTXt and iTXt chunks
    out: dict[str, str] = {}
    for key, value in raw.items():
        out[str(key)] = _fix_mojibake(str(value))
    for key, value in (im.info or {}).items():
        if key in out or key in _NOT_METADATA or not isinstance(key, str):
            continue
        if isinstance(value, bytes):
            if key not in ("comment", "xmp", "XML:com.adobe.xmp"):
                continue
            value = _decode_bytes(value)
        if isinstance(value, str):
            out[key] = value
    return out


def _fix_mojibake(text: str) -> str:
    """tEXt is latin-1 by the PNG spec, but some writers put UTF-8 there: read that back as UTF-8.

    Text that is real latin-1 (or iTXt, already proper text) almost never forms valid multi-byte
    UTF-8, so it is left alone.
    """
    if not any("\x80" <= ch <= "\xff" for ch in text):
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return text


def _decode_bytes(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_exif(im: Image.Image) -> dict[str, str]:
    """The EXIF text we care about: UserComment decoded, plus a few textual IFD0 tags."""
    out: dict[str, str] = {}
    try:
        exif = im.getexif()
    except Exception:  # malformed EXIF must not make the whole image unreadable
        return out
    try:
        for tag, tag_name in _EXIF_TEXT_TAGS.items():
            value = exif.get(tag)
            if isinstance(value, bytes):
                value = _decode_bytes(value)
            if isinstance(value, str) and value.strip("\0 "):
                out[tag_name] = value.rstrip("\0")
        comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:
        return out
    if isinstance(comment, str):
        comment = comment.encode("latin-1", "replace")
    if isinstance(comment, bytes):
        text = decode_user_comment(comment)
        if text:
            out["UserComment"] = text
    return out


def decode_user_comment(data: bytes) -> str:
    """Decode an EXIF UserComment: an 8-byte charset prefix, then the text.

    "UNICODE\\0" is UTF-16; the EXIF spec leaves the byte order open: piexif (A1111) writes big-endian,
    some Windows tools little-endian, so we take the order whose decoding looks like text. Without a
    known prefix the bytes are read as UTF-8, as A1111 does.
    """
    prefix, body = data[:8], data[8:]
    if prefix == _UNICODE_PREFIX:
        text = _decode_utf16(body)
    elif prefix == _ASCII_PREFIX:
        text = body.decode("utf-8", errors="replace")  # ASCII by the spec; UTF-8 tolerates writers
    elif prefix == _JIS_PREFIX:
        text = body.decode("shift_jis", errors="replace")
    elif prefix == b"\0" * 8:
        text = body.decode("utf-8", errors="ignore")
    else:
        text = data.decode("utf-8", errors="ignore")
    return text.rstrip("\0")


def _decode_utf16(body: bytes) -> str:
    if body[:2] == b"\xfe\xff":
        return body[2:].decode("utf-16-be", errors="replace")
    if body[:2] == b"\xff\xfe":
        return body[2:].decode("utf-16-le", errors="replace")
    if len(body) % 2:
        body = body + b"\0"
    # Latin text has a zero high byte: at even offsets in big-endian, at odd ones in little-endian.
    zeros_even = body[0::2].count(0)
    zeros_odd = body[1::2].count(0)
    candidates = ("utf-16-le", "utf-16-be") if zeros_odd > zeros_even else ("utf-16-be", "utf-16-le")
    for encoding in candidates:
        try:
            return body.decode(encoding)
        except UnicodeDecodeError:
            continue
    return body.decode(candidates[0], errors="replace")


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _novelai_infotext(novelai: Mapping[str, Any], width: int, height: int) -> str | None:
    """The infotext A1111 makes for a NovelAI image (Clip skip 2 and ENSD 31337 are NovelAI's own)."""
    info = novelai.get("Comment")
    prompt = novelai.get("Description")
    if not isinstance(info, dict) or not isinstance(prompt, str):
        return None
    try:
        sampler = _NOVELAI_SAMPLERS.get(str(info["sampler"]).lower(), "Euler a")
        return (
            f"{prompt}\nNegative prompt: {info['uc']}\n"
            f"Steps: {info['steps']}, Sampler: {sampler}, CFG scale: {info['scale']}, Seed: {info['seed']}, "
            f"Size: {width}x{height}, Clip skip: 2, ENSD: 31337"
        )
    except KeyError:
        return None


# --- showing ---------------------------------------------------------------------------------------


def as_text(meta: ImageMetadata) -> str:
    """What ``sfumato png-info FILE`` prints: the infotext if there is one, else a readable summary."""
    if meta.parameters is not None and meta.parameters_source != "novelai":
        return meta.parameters
    parts: list[str] = []
    if meta.parameters is not None:
        parts.append(meta.parameters)
    if meta.comfy_prompt is not None:
        parts.append("ComfyUI prompt (API graph):\n" + _summarise_comfy_prompt(meta.comfy_prompt))
    if meta.comfy_workflow is not None:
        parts.append("ComfyUI workflow: " + _summarise_comfy_workflow(meta.comfy_workflow))
    for key, value in (meta.invokeai or {}).items():
        parts.append(f"InvokeAI {key}:\n" + _indent(_pretty(value)))
    for key, value in (meta.novelai or {}).items():
        if meta.parameters is None or key not in ("Comment", "Description"):
            parts.append(f"NovelAI {key}:\n" + _indent(_pretty(value)))
    for key, value in meta.other.items():
        parts.append(f"{key}:\n" + _indent(value))
    if not parts:
        return f"{meta.source}: the image carries no generation parameters"
    return "\n\n".join(parts)


def as_json(meta: ImageMetadata) -> dict[str, Any]:
    """What ``sfumato png-info --json FILE`` prints: every field, JSON-serialisable."""
    return {
        "source": meta.source,
        "format": meta.format,
        "size": list(meta.size),
        "parameters": meta.parameters,
        "parameters_source": meta.parameters_source,
        "parsed": meta.parsed,
        "comfy_prompt": meta.comfy_prompt,
        "comfy_workflow": meta.comfy_workflow,
        "invokeai": meta.invokeai,
        "novelai": meta.novelai,
        "other": dict(meta.other),
    }


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.split("\n"))


def _summarise_comfy_prompt(graph: Any) -> str:
    """One line per node: id, class and its literal inputs (links to other nodes shown as ->id)."""
    if not isinstance(graph, dict):
        return _indent(_pretty(graph))
    lines = []
    for node_id, node in graph.items():
        if not isinstance(node, dict):
            lines.append(f"  {node_id}: {_short(node)}")
            continue
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        shown = []
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                shown.append(f"{name}=->{value[0]}")
            else:
                shown.append(f"{name}={_short(value)}")
        lines.append(f"  {node_id} {node.get('class_type', '?')}: {', '.join(shown)}")
    return "\n".join(lines) if lines else "  (empty)"


def _summarise_comfy_workflow(workflow: Any) -> str:
    if isinstance(workflow, dict):
        nodes = workflow.get("nodes")
        links = workflow.get("links")
        n_nodes = len(nodes) if isinstance(nodes, list) else 0
        n_links = len(links) if isinstance(links, list) else 0
        return f"{n_nodes} nodes, {n_links} links (see --json for the graph)"
    return "\n" + _indent(_short(workflow, 2000))


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- writing ---------------------------------------------------------------------------------------


def pnginfo_for(parameters: str, extra: Mapping[str, str] | None = None) -> PngImagePlugin.PngInfo:
    """The PNG text chunks to save with an image: ``parameters`` (and any `extra` chunks).

    tEXt, which every reader understands, unless the text is not latin-1 encodable; then iTXt
    (UTF-8), as Pillow's `add_text` makes A1111 do.
    """
    info = PngImagePlugin.PngInfo()
    for key, value in {"parameters": parameters, **(extra or {})}.items():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            info.add_itxt(key, value)
        else:
            info.add_text(key, value)
    return info
