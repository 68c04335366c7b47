"""Tests for sfumato.pnginfo: metadata of A1111, ComfyUI, InvokeAI and NovelAI images, and bad files.

Fixtures are made here with Pillow the way each tool writes them (A1111: PngInfo.add_text /
piexif UNICODE UserComment; ComfyUI: tEXt prompt + workflow; InvokeAI: tEXt invokeai_*).
"""

from __future__ import annotations

import io
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from sfumato.errors import UserError
from sfumato.pnginfo import ImageMetadata, as_json, as_text, decode_user_comment, pnginfo_for, read_metadata

A1111_TEXT = (
    "a cat wearing a hat, (masterpiece:1.2)\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 64x48, Model hash: 6ce0161689, "
    'Lora hashes: "hat: 0123456789ab", Version: v1.10.1'
)
UNICODE_TEXT = (
    "猫, 帽子\nNegative prompt: ぼやけ\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x48"
)

COMFY_PROMPT = {
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 156680208700286,
            "steps": 20,
            "cfg": 8,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle, purple galaxy", "clip": ["4", 1]}},
}
COMFY_WORKFLOW = {
    "last_node_id": 9,
    "nodes": [{"id": 3, "type": "KSampler"}, {"id": 4, "type": "CheckpointLoaderSimple"}],
    "links": [[1, 4, 0, 3, 0, "MODEL"]],
    "version": 0.4,
}


def png_bytes(info: PngImagePlugin.PngInfo | None = None, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def exif_image(fmt: str, user_comment: bytes, **extra_tags: object) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = user_comment
    for tag, value in extra_tags.items():
        exif[int(tag[1:], 16)] = value
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (1, 2, 3)).save(buf, fmt, exif=exif.tobytes())
    return buf.getvalue()


# --- A1111 ------------------------------------------------------------------------------------------


def test_a1111_png(tmp_path) -> None:
    path = tmp_path / "00001-1234.png"
    path.write_bytes(png_bytes(pnginfo_for(A1111_TEXT)))
    assert b"tEXtparameters\0" in path.read_bytes()  # latin-1 text: a plain tEXt chunk
    for source in (path, str(path), path.read_bytes()):
        meta = read_metadata(source)
        assert meta.parameters == A1111_TEXT
        assert meta.parameters_source == "parameters"
        assert meta.format == "PNG" and meta.size == (64, 48)
        assert meta.parsed is not None
        assert meta.parsed["Sampler"] == "DPM++ 2M" and meta.parsed["Schedule type"] == "Karras"
        assert meta.parsed["Lora hashes"] == "hat: 0123456789ab"
        assert meta.other == {}
    assert as_text(meta) == A1111_TEXT
    assert read_metadata(str(path)).source == str(path)


def test_unicode_parameters_use_itxt() -> None:
    data = png_bytes(pnginfo_for(UNICODE_TEXT))
    assert b"iTXtparameters\0" in data and b"tEXtparameters" not in data
    meta = read_metadata(data)
    assert meta.parameters == UNICODE_TEXT
    assert meta.parsed["Negative prompt"] == "ぼやけ"


def test_ztxt_and_utf8_in_text_chunk() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_TEXT, zip=True)  # zTXt
    assert read_metadata(png_bytes(info)).parameters == A1111_TEXT
    # Some writers put UTF-8 bytes into tEXt (latin-1 by the spec): read them back as UTF-8.
    info = PngImagePlugin.PngInfo()
    info.add(b"tEXt", b"parameters\0" + UNICODE_TEXT.encode("utf-8"))
    assert read_metadata(png_bytes(info)).parameters == UNICODE_TEXT
    # Genuine latin-1 stays latin-1.
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "café crème\nSteps: 1, Seed: 2, CFG scale: 3")
    assert read_metadata(png_bytes(info)).parsed["Prompt"] == "café crème"


def test_other_chunks_are_kept() -> None:
    meta = read_metadata(png_bytes(pnginfo_for(A1111_TEXT, {"Title": "My cat", "Author": "me"})))
    assert meta.other == {"Title": "My cat", "Author": "me"}
    assert as_json(meta)["other"] == {"Title": "My cat", "Author": "me"}


@pytest.mark.parametrize(
    ("fmt", "comment"),
    [
        ("JPEG", b"UNICODE\0" + UNICODE_TEXT.encode("utf-16-be")),  # what piexif (A1111) writes
        ("JPEG", b"UNICODE\0" + UNICODE_TEXT.encode("utf-16-le")),  # some Windows tools
        ("WEBP", b"UNICODE\0" + UNICODE_TEXT.encode("utf-16-be")),
        ("WEBP", b"UNICODE\0" + UNICODE_TEXT.encode("utf-16-le")),
        ("JPEG", b"UNICODE\0\xfe\xff" + UNICODE_TEXT.encode("utf-16-be")),  # with a byte-order mark
    ],
)
def test_exif_user_comment_unicode(fmt: str, comment: bytes) -> None:
    meta = read_metadata(exif_image(fmt, comment))
    assert meta.format == fmt
    assert meta.parameters == UNICODE_TEXT
    assert meta.parameters_source == "exif"
    assert meta.parsed["Prompt"] == "猫, 帽子"


def test_exif_user_comment_ascii_and_unknown_prefix() -> None:
    text = "a dog\nSteps: 10, Sampler: Euler, CFG scale: 5, Seed: 2"
    assert read_metadata(exif_image("JPEG", b"ASCII\0\0\0" + text.encode())).parameters == text
    assert read_metadata(exif_image("JPEG", b"\0" * 8 + text.encode())).parameters == text
    assert decode_user_comment(b"UNICODE\0" + "ab".encode("utf-16-be") + b"\0\0") == "ab"
    assert decode_user_comment(b"") == ""


def test_jpeg_comment_marker() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", comment=A1111_TEXT.encode())
    meta = read_metadata(buf.getvalue())
    assert meta.parameters == A1111_TEXT and meta.parameters_source == "comment"


# --- ComfyUI ----------------------------------------------------------------------------------------


def test_comfyui_png() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(COMFY_PROMPT))
    info.add_text("workflow", json.dumps(COMFY_WORKFLOW))
    meta = read_metadata(png_bytes(info))
    assert meta.parameters is None and meta.parsed is None
    assert meta.comfy_prompt == COMFY_PROMPT
    assert meta.comfy_workflow == COMFY_WORKFLOW
    assert meta.other == {}
    text = as_text(meta)
    assert "3 KSampler: seed=156680208700286, steps=20" in text
    assert "model=->4" in text
    assert "ComfyUI workflow: 2 nodes, 1 links" in text
    out = as_json(meta)
    assert json.loads(json.dumps(out))["comfy_prompt"]["4"]["inputs"]["ckpt_name"].startswith("v1-5")


def test_comfyui_invalid_json_is_kept_as_text() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", '{"3": {"class_type": "KSampler"')  # cut off
    info.add_text("workflow", "[" * 100_000)  # deep nesting must not blow the stack
    meta = read_metadata(png_bytes(info))
    assert meta.comfy_prompt == '{"3": {"class_type": "KSampler"'
    assert isinstance(meta.comfy_workflow, str)
    assert "KSampler" in as_text(meta)
    json.dumps(as_json(meta))


def test_comfyui_webp_exif_tags() -> None:
    # ComfyUI's WebP saver writes "prompt:{json}" into EXIF Model and "workflow:{json}" into Make.
    data = exif_image(
        "WEBP",
        b"",
        x0110="prompt:" + json.dumps(COMFY_PROMPT),
        x010f="workflow:" + json.dumps(COMFY_WORKFLOW),
    )
    meta = read_metadata(data)
    assert meta.comfy_prompt == COMFY_PROMPT
    assert meta.comfy_workflow == COMFY_WORKFLOW
    assert "Make" not in meta.other and "Model" not in meta.other


# --- InvokeAI / NovelAI -----------------------------------------------------------------------------


def test_invokeai_png() -> None:
    metadata = {
        "generation_mode": "txt2img",
        "positive_prompt": "a lighthouse at dawn",
        "negative_prompt": "",
        "seed": 42,
        "steps": 30,
        "cfg_scale": 7.5,
        "scheduler": "euler",
        "model": {"name": "stable-diffusion-v1-5", "base": "sd-1"},
    }
    graph = {"id": "abc", "nodes": {"noise": {"type": "noise", "seed": 42}}, "edges": []}
    info = PngImagePlugin.PngInfo()
    info.add_text("invokeai_metadata", json.dumps(metadata))
    info.add_text("invokeai_graph", json.dumps(graph))
    meta = read_metadata(png_bytes(info))
    assert meta.invokeai == {"invokeai_metadata": metadata, "invokeai_graph": graph}
    assert meta.parameters is None and meta.other == {}
    assert "a lighthouse at dawn" in as_text(meta)
    assert as_json(meta)["invokeai"]["invokeai_metadata"]["seed"] == 42


def test_old_invokeai_chunks() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "sd-metadata", json.dumps({"model": "stable diffusion", "image": {"prompt": [{"prompt": "x"}]}})
    )
    info.add_text("Dream", '"a cat" -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms')
    meta = read_metadata(png_bytes(info))
    assert meta.invokeai["sd-metadata"]["model"] == "stable diffusion"
    assert meta.invokeai["Dream"].startswith('"a cat" -s 50')


def test_novelai_png() -> None:
    comment = {"steps": 28, "sampler": "k_euler_ancestral", "seed": 77, "scale": 11, "uc": "lowres, bad"}
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "AI generated image")
    info.add_text("Description", "1girl, {masterpiece}")
    info.add_text("Software", "NovelAI")
    info.add_text("Source", "Stable Diffusion 1D44365E")
    info.add_text("Comment", json.dumps(comment))
    meta = read_metadata(png_bytes(info, size=(64, 96)))
    assert meta.novelai["Comment"] == comment and meta.novelai["Software"] == "NovelAI"
    # Like A1111, an infotext is made from NovelAI's chunks.
    assert meta.parameters_source == "novelai"
    assert meta.parsed["Prompt"] == "1girl, {masterpiece}"
    assert meta.parsed["Negative prompt"] == "lowres, bad"
    assert (meta.parsed["Sampler"], meta.parsed["Seed"], meta.parsed["Clip skip"]) == ("Euler a", "77", "2")
    assert (meta.parsed["Size-1"], meta.parsed["Size-2"], meta.parsed["ENSD"]) == ("64", "96", "31337")
    assert meta.other == {}
    assert "Steps: 28" in as_text(meta) and "NovelAI Source" in as_text(meta)


# --- nothing / bad files ----------------------------------------------------------------------------


def test_png_without_metadata(tmp_path) -> None:
    path = tmp_path / "plain.png"
    path.write_bytes(png_bytes())
    meta = read_metadata(path)
    assert isinstance(meta, ImageMetadata)
    assert meta.parameters is None and meta.parsed is None and not meta.has_generation_data
    assert as_text(meta) == f"{path}: the image carries no generation parameters"
    out = as_json(meta)
    assert out["parameters"] is None and out["parsed"] is None and out["size"] == [64, 48]
    json.dumps(out)


def test_truncated_png_names_the_file(tmp_path) -> None:
    big = io.BytesIO()
    Image.frombytes("RGB", (128, 128), os.urandom(128 * 128 * 3)).save(
        big, "PNG", pnginfo=pnginfo_for(A1111_TEXT)
    )
    data = big.getvalue()
    for cut in (len(data) // 2, len(data) - 12, 60):
        path = tmp_path / f"cut{cut}.png"
        path.write_bytes(data[:cut])
        with pytest.raises(UserError, match=r"cut\d+\.png.*(truncated|damaged)"):
            read_metadata(path)


def test_truncated_jpeg() -> None:
    data = exif_image("JPEG", b"ASCII\0\0\0x")
    with pytest.raises(UserError, match="image data"):
        read_metadata(data[: len(data) - 40])


@pytest.mark.parametrize(
    "data", [b"", b"hello world", os.urandom(512), b"\x89PNG\r\n\x1a\n" + os.urandom(100)]
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(UserError, match="image data"):
        read_metadata(data)


def test_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(UserError, match=r"nope\.png: no such file"):
        read_metadata(tmp_path / "nope.png")
    with pytest.raises(UserError, match="directory"):
        read_metadata(tmp_path)


def _mutations() -> st.SearchStrategy[bytes]:
    base = png_bytes(pnginfo_for(A1111_TEXT, {"prompt": json.dumps(COMFY_PROMPT)}))
    jpeg = exif_image("JPEG", b"UNICODE\0" + A1111_TEXT.encode("utf-16-be"))

    def mutate(args: tuple[int, int, bytes, bool]) -> bytes:
        pos, cut, junk, use_jpeg = args
        data = jpeg if use_jpeg else base
        pos %= len(data)
        return data[:pos] + junk + data[pos + len(junk) : len(data) - cut % 50]

    return st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.binary(max_size=8), st.booleans()).map(
        mutate
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), _mutations()))
def test_never_anything_but_user_error(data: bytes) -> None:
    try:
        meta = read_metadata(data)
    except UserError as e:
        assert "image data" in str(e)
    else:
        json.dumps(as_json(meta))
        assert isinstance(as_text(meta), str)


def test_pnginfo_for_chunk_types() -> None:
    latin = pnginfo_for("café\nSteps: 1")
    assert [c[0] for c in latin.chunks] == [b"tEXt"]
    uni = pnginfo_for("猫")
    assert [c[0] for c in uni.chunks] == [b"iTXt"]
