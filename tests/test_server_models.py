"""The server with model files in its folders: ESRGAN-family upscalers in Extras and in A1111's
"SD upscale" script, LaMa in Clean, LoRA tags in txt2img (hashes in the infotext, unpatched after) and
the LoRA listing (A1111's fields and ours, a note for a file that cannot be read)."""

from __future__ import annotations

import os

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from server_helpers import TINY, b64_png, decode_png, running_server

from sfumato import infotext
from sfumato.models.hashes import HashCache, addnet_hash
from sfumato.server import listings
from sfumato.settings import load_settings
from sfumato.testing.tiny_image_models import build_esrgan, build_lama, write_esrgan, write_lama
from sfumato.testing.tiny_networks import kohya_lora, write_network

STYLE_METADATA = {  # what kohya's sd-scripts records, JSON values as strings
    "ss_output_name": "style-v2",
    "ss_base_model_version": "sd_v1",
    "ss_network_dim": "4",
    "ss_tag_frequency": {"10_style": {"painterly": 7, " red": 2}, "5_more": {"red": 1}},
}


@pytest.fixture
def url(data_dir, tiny_models):
    (data_dir / "models" / "ESRGAN").mkdir(parents=True)
    write_esrgan(data_dir / "models" / "ESRGAN" / "4x-tiny.pth", build_esrgan())
    (data_dir / "models" / "Lora").mkdir(parents=True)
    write_network(
        data_dir / "models" / "Lora" / "style.safetensors", kohya_lora(tiny_models["sd1"][1]), STYLE_METADATA
    )
    with running_server(data_dir) as base:
        yield base


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120)


def picture(width=40, height=32, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_model_upscalers_are_listed_and_run_in_extras(url):
    listed = httpx.get(f"{url}/sdapi/v1/upscalers").json()
    assert [u["name"] for u in listed] == ["None", "Lanczos", "Nearest", "4x-tiny"]
    assert listed[-1]["scale"] == 4 and listed[-1]["model_path"].endswith("4x-tiny.pth")
    body = {"image": b64_png(picture()), "upscaling_resize": 2, "upscaler_1": "4x-tiny"}
    response = post(url, "/sdapi/v1/extra-single-image", body)
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["image"]).size == (80, 64)


def test_sd_upscale_script(url):
    body = {**TINY, "init_images": [b64_png(picture())], "width": 32, "height": 32, "denoising_strength": 0}
    response = post(
        url, "/sdapi/v1/img2img", {**body, "script_name": "SD upscale", "script_args": ["", 16, 1, 2]}
    )
    assert response.status_code == 200, response.text
    out = decode_png(response.json()["images"][0])
    assert out.size == (80, 64)
    assert out.convert("RGB").tobytes() == picture().resize((80, 64), Image.Resampling.LANCZOS).tobytes()
    parsed = infotext.parse(out.info["parameters"])
    assert parsed["SD upscale overlap"] == "16" and parsed["SD upscale upscaler"] == "Lanczos"
    by_name = post(
        url, "/sdapi/v1/img2img", {**body, "script_name": "SD upscale", "script_args": ["", 8, "4x-tiny", 2]}
    )
    assert by_name.status_code == 200, by_name.text
    for args, field in [
        (["", 8, 9, 2], "script_args.2"),
        (["", 8, 1, 20], "script_args.3"),
        (["", -1], "script_args.1"),
        (["", 32, 1, 2], "script_args.1"),  # not smaller than the 32-pixel tile
    ]:
        bad = post(url, "/sdapi/v1/img2img", {**body, "script_name": "SD upscale", "script_args": args})
        assert bad.status_code == 422 and bad.json()["field"] == field, bad.text
    assert "sd upscale" in httpx.get(f"{url}/sdapi/v1/scripts").json()["img2img"]


def test_clean_with_a_lama_model_and_the_methods_list(url, data_dir):
    (data_dir / "models" / "inpaint").mkdir(parents=True)
    write_lama(data_dir / "models" / "inpaint" / "big-lama.safetensors", build_lama())
    assert httpx.get(f"{url}/sfumato/v1/clean/methods").json() == ["telea", "ns", "big-lama"]
    image, mask = picture(), Image.new("L", (40, 32), 0)
    mask.paste(255, (10, 10, 20, 20))
    body = {"image": b64_png(image), "mask": b64_png(mask), "method": "big-lama"}
    response = post(url, "/sfumato/v1/clean", body)
    assert response.status_code == 200, response.text
    result = np.asarray(decode_png(response.json()["image"]).convert("RGB"))
    keep = np.asarray(mask) == 0
    np.testing.assert_array_equal(result[keep], np.asarray(image)[keep])
    sd = post(url, "/sfumato/v1/clean", {**body, "method": "sd"})
    assert sd.status_code == 422 and "img2img" in sd.json()["error"]


def test_lora_tags_through_the_api_and_the_next_request_is_the_base_model_again(url):
    def generate(prompt):
        response = post(url, "/sdapi/v1/txt2img", {**TINY, "prompt": prompt, "seed": 5})
        assert response.status_code == 200, response.text
        image = decode_png(response.json()["images"][0])
        return image.convert("RGB").tobytes(), infotext.parse(image.info["parameters"])

    plain, _ = generate("a cat")
    styled, parsed = generate("a cat <lora:style:1>")
    assert styled != plain and parsed["Lora hashes"].startswith("style: ")
    assert generate("a cat")[0] == plain  # same server, same loaded model: unpatched exactly
    loras = httpx.get(f"{url}/sdapi/v1/loras").json()
    assert [entry["name"] for entry in loras] == ["style"]


def test_loras_listing_has_a1111_fields_and_ours_and_a_note_for_a_bad_file(url, data_dir):
    folder = data_dir / "models" / "Lora"
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    write_network(folder / "other.safetensors", {"position_ids": torch.zeros(3)}, {"ss_network_dim": "8"})
    response = httpx.get(f"{url}/sdapi/v1/loras")
    assert response.status_code == 200, response.text
    rows = {row["name"]: row for row in response.json()}
    assert sorted(rows) == ["broken", "other", "style"]

    style = rows["style"]
    assert list(style)[:4] == ["name", "alias", "path", "metadata"]  # A1111's fields first, unchanged
    assert style["alias"] == "style-v2" and style["path"] == str(folder / "style.safetensors")
    assert style["metadata"]["ss_network_dim"] == "4"
    assert style["metadata"]["ss_tag_frequency"]["10_style"] == {"painterly": 7, " red": 2}  # decoded
    assert style["family"] == "sd1" and style["base_model"] == "sd_v1"
    assert style["kinds"] == ["lora"] and style["rank"] == 4 and style["alpha"] == 2.0
    assert style["hash"] == addnet_hash(folder / "style.safetensors")  # the "Lora hashes" short hash
    assert style["trigger_words"] == ["painterly", "red"]  # summed over folders, most used first
    assert "note" not in style

    broken = rows["broken"]
    assert broken["path"] == str(folder / "broken.safetensors") and broken["metadata"] == {}
    assert "truncated or corrupt" in broken["note"]
    assert broken["family"] is None and broken["kinds"] == [] and broken["hash"] is None
    other = rows["other"]  # a safetensors file with no network in it: its metadata, and why it is no LoRA
    assert other["metadata"] == {"ss_network_dim": "8"} and "not a LoRA" in other["note"]

    models = {row["model_name"]: row for row in httpx.get(f"{url}/sdapi/v1/sd-models").json()}
    assert models["tiny-sd1"]["family"] == "sd1"
    assert {"title", "model_name", "hash", "sha256", "filename", "config"} <= set(models["tiny-sd1"])


def test_lora_files_are_read_once_while_unchanged(data_dir, tiny_models, monkeypatch):
    folder = data_dir / "models" / "Lora"
    folder.mkdir(parents=True)
    for name in ("a", "b"):
        write_network(folder / f"{name}.safetensors", kohya_lora(tiny_models["sd1"][1]))
    reads: list[str] = []

    def counting(entry, hashes):
        reads.append(entry.name)
        return describe(entry, hashes)

    describe = listings.describe_network
    monkeypatch.setattr(listings, "describe_network", counting)
    settings = load_settings({"data_dir": data_dir}, env={})
    hashes, facts = HashCache(None), listings.FileFacts()
    first = listings.loras(settings, hashes, facts)
    assert listings.loras(settings, hashes, facts) == first and reads == ["a", "b"]
    stat = (folder / "b.safetensors").stat()
    os.utime(folder / "b.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # b changed
    assert listings.loras(settings, hashes, facts) == first and reads == ["a", "b", "b"]
