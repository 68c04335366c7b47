"""The A1111-compatible API on a real uvicorn, with the tiny SD1 checkpoint."""

from __future__ import annotations

import io
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import webuiapi
from PIL import Image
from server_helpers import TINY, b64_png, decode_png, running_server

from sfumato import infotext
from sfumato.server.app import ServeOptions


@pytest.fixture
def two_models(data_dir):
    """The data dir with a second checkpoint (same weights, another name) to switch to."""
    folder = data_dir / "models" / "Stable-diffusion"
    shutil.copy(folder / "tiny-sd1.safetensors", folder / "other.safetensors")
    return data_dir


@pytest.fixture
def url(two_models):
    with running_server(two_models) as base:
        yield base


def post(url: str, path: str, body: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120, **kwargs)


def test_txt2img_returns_png_with_infotext_and_a1111_info(url):
    response = post(
        url, "/sdapi/v1/txt2img", {**TINY, "prompt": "a red circle", "batch_size": 2, "unknown": 1}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    images = [decode_png(b) for b in body["images"]]
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    info = json.loads(body["info"])
    assert info["all_seeds"] == [1, 2] and info["seed"] == 1
    assert info["sd_model_name"] == "other" or info["sd_model_name"] == "tiny-sd1"
    parsed = infotext.parse(images[1].info["parameters"])
    assert parsed["Seed"] == "2" and parsed["Steps"] == "2" and parsed["Sampler"] == "Euler"
    assert info["infotexts"][1] == images[1].info["parameters"]
    assert body["parameters"]["prompt"] == "a red circle"
    # A1111's API saves only with save_images: true; otherwise the images stay in the server's results
    paths = [i["path"] for i in httpx.get(f"{url}/sfumato/v1/images").json()]
    assert len(paths) == 2 and all("/.sfumato/results/" in p for p in paths)
    saved = post(url, "/sdapi/v1/txt2img", {**TINY, "save_images": True}).json()
    newest = httpx.get(f"{url}/sfumato/v1/images", params={"limit": 1}).json()[0]
    assert "/outputs/txt2img-images/" in newest["path"] and json.loads(saved["info"])["seed"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": "many"}, "steps"),
        ({"width": 65}, "width"),
        ({"cfg_scale": -1}, "cfg_scale"),
        ({"sampler_name": "Euler z"}, "sampler_name"),
        ({"enable_hr": True, "hr_upscaler": "Latent (bicubc)"}, "hr_upscaler"),
        ({"tiling": True}, "tiling"),
        ({"override_settings": {"sd_model_checkpoint": "nope"}}, "sd_model_checkpoint"),
        ({"model": "/etc/hostname"}, "model"),
    ],
)
def test_invalid_values_are_422_naming_the_field(url, body, field):
    response = post(url, "/sdapi/v1/txt2img", {**TINY, **body})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert post(url, "/sdapi/v1/txt2img", TINY).status_code == 200  # still healthy


def test_model_outside_the_folders_is_refused_even_when_it_exists(url, tiny_models):
    outside = str(tiny_models["sd1"][0])  # a real checkpoint, but not in the data dir's model folders
    response = post(url, "/sdapi/v1/txt2img", {**TINY, "model": outside})
    assert response.status_code == 422 and response.json()["field"] == "model"


def test_bad_uploads_are_clear_4xx(url):
    garbage = post(url, "/sdapi/v1/png-info", {"image": "bm90IGFuIGltYWdl"})  # "not an image"
    assert garbage.status_code == 422 and garbage.json()["field"] == "image"
    not_base64 = post(url, "/sdapi/v1/png-info", {"image": "%%%"})
    assert not_base64.status_code == 422
    wrong_type = post(url, "/sdapi/v1/png-info", {"image": 5})
    assert wrong_type.status_code == 422 and wrong_type.json()["field"] == "image"
    huge = httpx.post(
        f"{url}/sdapi/v1/png-info",
        content=b'{"image": "' + b"A" * (65 << 20) + b'"}',
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert huge.status_code == 413
    assert post(url, "/sdapi/v1/png-info", {"image": b64_png(Image.new("RGB", (8, 8)))}).status_code == 200


def test_png_info_reads_back_the_parameters(url):
    made = post(url, "/sdapi/v1/txt2img", {**TINY, "prompt": "blue square"}).json()
    info = post(url, "/sdapi/v1/png-info", {"image": "data:image/png;base64," + made["images"][0]}).json()
    assert info["info"].startswith("blue square")
    assert info["parameters"]["Seed"] == "1" and info["parameters"]["Prompt"] == "blue square"


def test_webuiapi_client_unchanged(url):
    port = int(url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler", steps=2)
    result = api.txt2img(prompt="a cat", seed=5, width=64, height=64, cfg_scale=5)
    assert result.image.size == (64, 64)
    assert result.info["seed"] == 5
    assert infotext.parse(api.png_info(result.image).info)["Seed"] == "5"

    names = api.util_get_model_names()
    assert any(name.startswith("other.safetensors [") for name in names)
    assert any(name.startswith("sfumato-shapes.safetensors") for name in names)  # the embedded model
    api.util_set_model("other")
    assert api.util_get_current_model().startswith("other.safetensors [")
    switched = api.txt2img(prompt="a cat", seed=5, width=64, height=64)
    assert switched.info["sd_model_name"] == "other"
    api.set_options({"CLIP_stop_at_last_layers": 2})
    assert api.get_options()["CLIP_stop_at_last_layers"] == 2
    assert "Clip skip: 2" in api.txt2img(prompt="a cat", seed=5, width=64, height=64).info["infotexts"][0]
    assert "Euler a" in api.util_get_sampler_names()
    assert "Karras" in [s["label"] for s in api.get_schedulers()]


def test_override_settings_apply_to_one_request_only(url):
    body = {**TINY, "override_settings": {"sd_model_checkpoint": "other"}}
    assert json.loads(post(url, "/sdapi/v1/txt2img", body).json()["info"])["sd_model_name"] == "other"
    plain = json.loads(post(url, "/sdapi/v1/txt2img", TINY).json()["info"])
    assert plain["sd_model_name"] == "other" or plain["sd_model_name"] == "tiny-sd1"
    assert (
        plain["sd_model_name"]
        == httpx.get(f"{url}/sdapi/v1/options").json()["sd_model_checkpoint"].split(".safetensors")[0]
    )


def test_list_endpoints(url):
    def get(path: str):
        response = httpx.get(f"{url}/sdapi/v1/{path}", timeout=30)
        assert response.status_code == 200, (path, response.text)
        return response.json()

    models = get("sd-models")
    assert {m["model_name"] for m in models} >= {"tiny-sd1", "other", "sfumato-shapes"}
    assert all(m["title"].endswith(f"[{m['hash']}]") and len(m["sha256"]) == 64 for m in models)
    assert get("sd-vae") == [] and get("loras") == [] and get("hypernetworks") == []
    assert get("embeddings") == {"loaded": {}, "skipped": {}}
    assert get("prompt-styles") == []
    assert "DPM++ 2M" in [s["name"] for s in get("samplers")]
    assert [u["name"] for u in get("upscalers")][:2] == ["None", "Lanczos"]
    modes = [m["name"] for m in get("latent-upscale-modes")]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes and len(modes) == 6
    assert get("memory")["ram"]["total"] > 0
    assert get("cmd-flags")["listen"] is False
    assert get("progress")["progress"] == 0.0
    assert get("options")["sd_model_checkpoint"].startswith("other.safetensors") or get("options")[
        "sd_model_checkpoint"
    ].startswith("tiny-sd1.safetensors")
    for path in (
        "refresh-checkpoints",
        "refresh-vae",
        "refresh-embeddings",
        "unload-checkpoint",
        "reload-checkpoint",
    ):
        assert post(url, f"/sdapi/v1/{path}").status_code == 200, path


def test_twenty_concurrent_requests_all_complete(url):
    def one(seed: int) -> int:
        response = post(url, "/sdapi/v1/txt2img", {**TINY, "steps": 1, "seed": seed})
        assert response.status_code == 200, response.text
        return json.loads(response.json()["info"])["seed"]

    with ThreadPoolExecutor(20) as pool:
        seeds = list(pool.map(one, range(100, 120)))
    assert seeds == list(range(100, 120))
    jobs = httpx.get(f"{url}/sfumato/v1/jobs", params={"limit": 100}).json()
    done = [j for j in jobs if j["state"] == "done" and j["request"]["generation"]["steps"] == 1]
    assert len(done) == 20
    images = httpx.get(f"{url}/sfumato/v1/images", params={"limit": 100}).json()
    assert sorted(i["seed"] for i in images if i["seed"] >= 100) == list(range(100, 120))


def test_api_auth_when_on(data_dir):
    with running_server(data_dir, ServeOptions(api_auth={"ann": "s3cret", "bo": "pw"})) as base:
        assert httpx.get(f"{base}/sdapi/v1/samplers").status_code == 401
        assert httpx.get(f"{base}/sdapi/v1/samplers", auth=("ann", "wrong")).status_code == 401
        assert httpx.get(f"{base}/sdapi/v1/samplers", auth=("eve", "s3cret")).status_code == 401
        assert httpx.get(f"{base}/sdapi/v1/samplers", auth=("bo", "pw")).status_code == 200
        assert httpx.get(f"{base}/sfumato/v1/jobs").status_code == 401
        port = int(base.rsplit(":", 1)[1])
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="ann", password="s3cret", steps=1)
        assert api.txt2img(prompt="x", width=64, height=64, sampler_name="Euler").image.size == (64, 64)


def test_foreign_hosts_and_cross_origin_posts_are_refused(url):
    rebound = httpx.get(f"{url}/sdapi/v1/samplers", headers={"host": "evil.example:7860"})
    assert rebound.status_code == 421
    csrf = post(url, "/sdapi/v1/options", {"samples_save": False}, headers={"origin": "https://evil.example"})
    assert csrf.status_code == 403 and csrf.json()["field"] == "Origin"
    assert httpx.get(f"{url}/sdapi/v1/options").json()["samples_save"] is True
    same_origin = post(url, "/sdapi/v1/options", {"samples_save": False}, headers={"origin": url})
    assert same_origin.status_code == 200


def test_extras_upscale_single_and_batch(url):
    source = Image.new("RGB", (8, 6), (200, 10, 10))
    source.putpixel((0, 0), (0, 0, 255))
    single = post(
        url,
        "/sdapi/v1/extra-single-image",
        {"image": b64_png(source), "upscaling_resize": 3, "upscaler_1": "Nearest"},
    )
    assert single.status_code == 200, single.text
    big = decode_png(single.json()["image"])
    assert (
        big.size == (24, 18) and big.getpixel((2, 2)) == (0, 0, 255) and big.getpixel((3, 3)) == (200, 10, 10)
    )
    sized = post(
        url,
        "/sdapi/v1/extra-single-image",
        {"image": b64_png(source), "resize_mode": 1, "upscaling_resize_w": 16, "upscaling_resize_h": 16,
         "upscaler_1": "Lanczos"},
    )  # fmt: skip
    assert decode_png(sized.json()["image"]).size == (16, 16)  # cropped to fit, not stretched
    batch = post(
        url,
        "/sdapi/v1/extra-batch-images",
        {"imageList": [{"data": b64_png(source), "name": "a"}, {"data": b64_png(source), "name": "b"}],
         "upscaler_1": "Nearest"},
    )  # fmt: skip
    assert [decode_png(i).size for i in batch.json()["images"]] == [(16, 12), (16, 12)]
    unknown = post(url, "/sdapi/v1/extra-single-image", {"image": b64_png(source), "upscaler_1": "ESRGAN 9x"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "upscaler_1"
    broken = post(
        url, "/sdapi/v1/extra-batch-images", {"imageList": [{"data": "AAAA"}], "upscaler_1": "Nearest"}
    )
    assert broken.status_code == 422 and broken.json()["field"] == "imageList.0.data"


def test_ui_auth_guards_the_page_only_and_cors_allows_listed_origins(data_dir):
    options = ServeOptions(ui_auth={"ann": "pw"}, cors_allow_origins=("https://app.example",))
    with running_server(data_dir, options) as base:
        assert httpx.get(f"{base}/").status_code == 401
        assert httpx.get(f"{base}/ui/app.js").status_code == 401
        page = httpx.get(f"{base}/", auth=("ann", "pw"))
        assert page.status_code == 200 and "Content-Security-Policy" in page.headers
        assert httpx.get(f"{base}/ui/../jobs.py", auth=("ann", "pw")).status_code == 404
        assert httpx.get(f"{base}/sdapi/v1/samplers").status_code == 200  # no --api-auth given
        allowed = post(
            base, "/sdapi/v1/options", {"samples_save": True}, headers={"origin": "https://app.example"}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = post(
            base, "/sdapi/v1/options", {"samples_save": True}, headers={"origin": "https://evil.example"}
        )
        assert other.status_code == 403


def test_txt2img_hires_fix(url):
    body = {**TINY, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 1, "denoising_strength": 0.5}
    response = post(url, "/sdapi/v1/txt2img", body)
    assert response.status_code == 200, response.text
    image = decode_png(response.json()["images"][0])
    assert image.size == (128, 128)
    parsed = infotext.parse(image.info["parameters"])
    assert parsed["Hires upscale"] == "2" and parsed["Denoising strength"] == "0.5"


def test_img2img_and_inpainting(url):
    picture = Image.effect_noise((64, 64), 60).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 24, 24))
    body = {
        **TINY,
        "init_images": [b64_png(picture)],
        "mask": b64_png(mask),
        "denoising_strength": 0.6,
        "mask_blur": 0,
        "inpainting_fill": 1,
    }
    response = post(url, "/sdapi/v1/img2img", body)
    assert response.status_code == 200, response.text
    payload = response.json()
    out = decode_png(payload["images"][0])
    parsed = infotext.parse(out.info["parameters"])
    assert parsed["Denoising strength"] == "0.6" and parsed["Inpaint area"] == "Only masked"
    assert payload["parameters"]["init_images"] is None  # include_init_images is off
    kept = out.convert("RGB").crop((32, 32, 64, 64)).tobytes()
    assert kept == picture.crop((32, 32, 64, 64)).tobytes()
    plain = post(url, "/sdapi/v1/img2img", {**TINY, "init_images": [b64_png(picture)]})
    assert plain.status_code == 200 and decode_png(plain.json()["images"][0]).size == (64, 64)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "init_images"),
        ({"init_images": ["bm90IGFuIGltYWdl"]}, "init_images.0"),
        ({"init_images": ["__PICTURE__"], "denoising_strength": 2}, "denoising_strength"),
        ({"init_images": ["__PICTURE__"], "mask": "%%%"}, "mask"),
    ],
)
def test_img2img_bad_input_is_422_naming_the_field(url, body, field):
    picture = b64_png(Image.new("RGB", (64, 64), "white"))
    body = {k: ([picture] if v == ["__PICTURE__"] else v) for k, v in body.items()}
    response = post(url, "/sdapi/v1/img2img", {**TINY, **body})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_webuiapi_img2img_with_and_without_a_mask(url):
    port = int(url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler", steps=2)
    picture = Image.effect_noise((64, 64), 60).convert("RGB")
    plain = api.img2img(images=[picture], prompt="a cat", seed=7, width=64, height=64, denoising_strength=0.5)
    assert plain.image.size == (64, 64) and plain.info["seed"] == 7
    assert "Denoising strength: 0.5" in plain.info["infotexts"][0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 40, 64, 64))
    inpainted = api.img2img(
        images=[picture],
        mask_image=mask,
        inpainting_fill=1,
        mask_blur=0,
        inpaint_full_res=False,
        prompt="a cat",
        seed=7,
        width=64,
        height=64,
    )
    out = inpainted.image.convert("RGB")
    assert out.size == (64, 64)
    assert out.crop((0, 0, 40, 64)).tobytes() == picture.crop((0, 0, 40, 64)).tobytes()  # unmasked kept
    assert out.crop((40, 40, 64, 64)).tobytes() != picture.crop((40, 40, 64, 64)).tobytes()
    assert "Mask blur: 0" in inpainted.info["infotexts"][0]


OUTPAINT = "Poor man's outpainting"


def test_img2img_outpainting_script(url):
    picture = Image.effect_noise((64, 64), 60).convert("RGB")
    body = {**TINY, "init_images": [b64_png(picture)], "script_name": OUTPAINT, "denoising_strength": 1}
    sides = post(url, "/sdapi/v1/img2img", {**body, "script_args": [32, 0, 1, ["left", "right"]]})
    assert sides.status_code == 200, sides.text
    wide = decode_png(sides.json()["images"][0]).convert("RGB")
    assert wide.size == (128, 64)  # 64 + 2·32, a multiple of 64 as A1111 rounds
    assert wide.crop((32, 0, 96, 64)).tobytes() == picture.tobytes()  # the picture, in place
    assert wide.crop((0, 0, 32, 64)).tobytes() != picture.crop((0, 0, 1, 64)).resize((32, 64)).tobytes()
    # Lower case, A1111's defaults for missing arguments (mask blur 4: the mask reaches 8 px into the
    # picture and is blurred with σ 8, so only the middle columns stay exact), one side rounded up.
    up = post(url, "/sdapi/v1/img2img", {**body, "script_name": OUTPAINT.lower(), "script_args": [16]})
    assert up.status_code == 200, up.text
    grown = decode_png(up.json()["images"][0]).convert("RGB")
    assert grown.size == (128, 128)
    assert grown.crop((60, 60, 68, 68)).tobytes() == picture.crop((28, 28, 36, 36)).tobytes()
    only_up = post(url, "/sdapi/v1/img2img", {**body, "script_args": [8, 0, 0, ["up"]]})
    tall = decode_png(only_up.json()["images"][0]).convert("RGB")
    assert tall.size == (64, 128) and tall.crop((0, 64, 64, 128)).tobytes() == picture.tobytes()
    assert OUTPAINT.lower() in httpx.get(f"{url}/sdapi/v1/scripts").json()["img2img"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"script_args": [0]}, "script_args.0"),
        ({"script_args": ["many"]}, "script_args.0"),
        ({"script_args": [5000]}, "script_args.0"),
        ({"script_args": [32, -1]}, "script_args.1"),
        ({"script_args": [32, 4, 7]}, "script_args.2"),
        ({"script_args": [32, 4, 0, ["sideways"]]}, "script_args.3"),
        ({"script_args": [32, 4, 0, []]}, "script_args.3"),
        ({"script_args": [32, 4, 0, ["left"], 1]}, "script_args"),
        ({"script_args": [32], "mask": "__PICTURE__"}, "mask"),
        ({"script_name": "X/Y/Z plot"}, "script_name"),
    ],
)
def test_outpainting_bad_script_args_are_422_naming_the_field(url, extra, field):
    picture = b64_png(Image.new("RGB", (64, 64), "white"))
    body = {**TINY, "init_images": [picture], "script_name": OUTPAINT, **extra}
    body = {k: (picture if v == "__PICTURE__" else v) for k, v in body.items()}
    response = post(url, "/sdapi/v1/img2img", body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    txt2img = post(url, "/sdapi/v1/txt2img", {**TINY, "script_name": OUTPAINT})  # img2img's script only
    assert txt2img.status_code == 422 and txt2img.json()["field"] == "script_name"


def test_img2img_through_the_job_api(url):
    picture = Image.effect_noise((64, 64), 60).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 16, 16))
    request = {**TINY, "init_images": [b64_png(picture)], "mask": b64_png(mask), "mask_blur": 0}
    submitted = post(url, "/sfumato/v1/jobs", {"kind": "img2img", "request": request})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["request"]["inputs"] == {"init_image": True, "mask": True}  # no megabytes
    for _ in range(600):
        job = httpx.get(f"{url}/sfumato/v1/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert job["state"] == "done" and len(job["images"]) == 1
    made = httpx.get(f"{url}/sfumato/v1/jobs/{job_id}/images/0").content
    kept = Image.open(io.BytesIO(made)).convert("RGB").crop((16, 0, 64, 64))
    assert kept.tobytes() == picture.crop((16, 0, 64, 64)).tobytes()  # outside the mask
    bad = post(url, "/sfumato/v1/jobs", {"kind": "img2img", "request": {**request, "steps": 0}})
    assert bad.status_code == 422 and bad.json()["field"] == "request.steps"
    missing = post(url, "/sfumato/v1/jobs", {"kind": "img2img", "request": TINY})
    assert missing.status_code == 422 and missing.json()["field"] == "init_images"


def test_clean_removes_the_masked_object(url):
    picture = Image.new("RGB", (48, 40), (250, 250, 250))
    picture.paste((200, 20, 20), (18, 14, 30, 26))  # a red square to remove
    picture.putpixel((2, 2), (0, 0, 255))  # a marker outside the mask
    mask = Image.new("L", picture.size, 0)
    mask.paste(255, (16, 12, 32, 28))
    for method in ("telea", "ns"):
        body = {"image": "data:image/png;base64," + b64_png(picture), "mask": b64_png(mask), "method": method}
        response = post(url, "/sfumato/v1/clean", body)
        assert response.status_code == 200, response.text
        payload = response.json()
        result = decode_png(payload["image"]).convert("RGB")
        assert result.size == picture.size and payload["notes"] == []
        red, green, blue = result.getpixel((24, 20))  # the hole's middle: background now
        assert min(red, green, blue) > 200, (method, result.getpixel((24, 20)))
        outside = Image.composite(Image.new("RGB", picture.size), result, mask)
        assert outside.tobytes() == Image.composite(Image.new("RGB", picture.size), picture, mask).tobytes()
    small_mask = post(
        url, "/sfumato/v1/clean", {"image": b64_png(picture), "mask": b64_png(mask.resize((24, 20)))}
    )
    assert small_mask.status_code == 200 and "resized" in small_mask.json()["notes"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": "bm90IGFuIGltYWdl"}, "image"),
        ({"mask": "%%%"}, "mask"),
        ({"mask": None}, "mask"),
        ({"method": "magic"}, "method"),
        ({"image": 5}, "image"),
    ],
)
def test_clean_bad_input_is_422_naming_the_field(url, body, field):
    good = {"image": b64_png(Image.new("RGB", (8, 8))), "mask": b64_png(Image.new("L", (8, 8), 255))}
    response = post(url, "/sfumato/v1/clean", {**good, **body})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


@pytest.mark.parametrize(
    ("body", "written", "bad", "options", "written_by_options", "reset"),
    [
        (
            {"s_min_uncond": 3},
            "NGMS: 3",
            {"s_min_uncond": "fast"},
            {"s_min_uncond": 2, "s_min_uncond_all": True},
            "NGMS: 2, NGMS all steps: True",
            {"s_min_uncond": 0, "s_min_uncond_all": False},
        ),
        (
            {"token_merging_ratio": 0.5},
            "Token merging ratio: 0.5",
            {"token_merging_ratio": 0.95},
            {"token_merging_ratio": 0.3},
            "Token merging ratio: 0.3",
            {"token_merging_ratio": 0},
        ),
        (
            {"deepcache_interval": 2},
            "DeepCache interval: 2",
            {"deepcache_interval": 1.5},
            {"deepcache_interval": 3},
            "DeepCache interval: 3",
            {"deepcache_interval": 0},
        ),
    ],
)
def test_an_approximation_from_the_body_or_the_options(
    url, body, written, bad, options, written_by_options, reset
):
    made = post(url, "/sdapi/v1/txt2img", {**TINY, **body}).json()
    assert written in json.loads(made["info"])["infotexts"][0]
    refused = post(url, "/sdapi/v1/options", bad)
    assert refused.status_code == 422 and refused.json()["field"] == next(iter(bad))
    try:
        assert post(url, "/sdapi/v1/options", options).status_code == 200
        info = json.loads(post(url, "/sdapi/v1/txt2img", TINY).json()["info"])["infotexts"][0]
        assert written_by_options in info
    finally:
        post(url, "/sdapi/v1/options", reset)


def test_img2img_jobs_use_the_img2img_token_merging_ratio(url):
    assert post(url, "/sdapi/v1/options", {"token_merging_ratio_img2img": 0.3}).status_code == 200
    try:
        init = {"init_images": [b64_png(Image.effect_noise((64, 64), 60).convert("RGB"))]}
        made = post(url, "/sdapi/v1/img2img", {**TINY, **init}).json()
        assert "Token merging ratio: 0.3" in json.loads(made["info"])["infotexts"][0]
        plain = post(url, "/sdapi/v1/txt2img", TINY).json()
        assert "Token merging ratio" not in json.loads(plain["info"])["infotexts"][0]
    finally:
        post(url, "/sdapi/v1/options", {"token_merging_ratio_img2img": 0})


def test_taesd_final_decode_without_its_file_is_a_422_naming_the_option(url):
    response = post(url, "/sdapi/v1/txt2img", {**TINY, "sd_vae_decode_method": "TAESD"})
    assert response.status_code == 422 and response.json()["field"] == "sd_vae_decode_method"
    assert "taesd_decoder.pth" in response.text
    bad = post(url, "/sdapi/v1/options", {"sd_vae_decode_method": "Approx NN"})
    assert bad.status_code == 422 and bad.json()["field"] == "sd_vae_decode_method"
    overridden = {**TINY, "override_settings": {"sd_vae_decode_method": "TAESD"}}
    assert post(url, "/sdapi/v1/txt2img", overridden).status_code == 422
