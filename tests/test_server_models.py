"""The server with model files in its folders: ESRGAN-family upscalers in Extras and in A1111's
"SD upscale" script, LaMa in Clean, and LoRA tags in txt2img (hashes in the infotext, unpatched after)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image
from server_helpers import TINY, b64_png, decode_png, running_server

from sfumato import infotext
from sfumato.testing.tiny_image_models import build_esrgan, build_lama, write_esrgan, write_lama
from sfumato.testing.tiny_networks import kohya_lora, write_network


@pytest.fixture
def url(data_dir, tiny_models):
    (data_dir / "models" / "ESRGAN").mkdir(parents=True)
    write_esrgan(data_dir / "models" / "ESRGAN" / "4x-tiny.pth", build_esrgan())
    (data_dir / "models" / "Lora").mkdir(parents=True)
    write_network(data_dir / "models" / "Lora" / "style.safetensors", kohya_lora(tiny_models["sd1"][1]))
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
