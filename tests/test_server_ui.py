"""The web UI driven in headless Chromium, as a person would use it; screenshots of the main tabs are
saved in `test-artifacts/screenshots/`."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from server_helpers import TINY, running_server

from sfumato.testing.tiny_networks import kohya_lora, write_network

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # Makefile installs Debian's


def open_page(data_dir: Path) -> Iterator:
    """The UI over a server of `data_dir`, in headless Chromium; fails if the page threw."""
    with running_server(data_dir) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(base)
        page.base_url = base  # type: ignore[attr-defined]
        yield page
        browser.close()
        assert not errors, errors  # no uncaught JavaScript error on the way


@pytest.fixture
def page(data_dir):
    yield from open_page(data_dir)


@pytest.fixture
def networks_page(data_dir, tiny_models):
    """The page with LoRAs (one for the checkpoint's family, one for SDXL) and an embedding to pick."""
    loras = data_dir / "models" / "Lora"
    loras.mkdir(parents=True)
    components = tiny_models["sd1"][1]
    tags = {"ss_tag_frequency": {"10_style": {"painterly": 4, "soft light": 2}}}
    write_network(
        loras / "style.safetensors", kohya_lora(components), {"ss_base_model_version": "sd_v1", **tags}
    )
    write_network(
        loras / "xl-detail.safetensors",
        kohya_lora(components, seed=1),
        {"ss_base_model_version": "sdxl_base_v1-0"},
    )
    (data_dir / "embeddings").mkdir()
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))  # the tiny SD1's width
    torch.save(
        {"string_to_param": {"*": vectors}, "name": "mystyle", "step": 100},
        data_dir / "embeddings" / "mystyle.pt",
    )
    yield from open_page(data_dir)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # the output column is sticky: show it where it starts
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


T2I, I2I = "#txt2img-form", "#img2img-form"


def natural_size(page, selector: str) -> tuple[int, int]:
    return tuple(page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]"))


def watch_progress(page, form: str) -> None:
    """The progress bar moves (at least three values) and a step preview shows while the job runs."""
    bar = page.locator(f"{form} .progress .bar")
    values: set[str] = set()
    for _ in range(400):
        value = bar.get_attribute("aria-valuenow")
        if value and page.locator(f"{form} .progress").is_visible():
            values.add(value)
        if len(values) >= 3:
            break
        page.wait_for_timeout(25)
    assert len(values) >= 3, values
    expect(page.locator(f"{form} .preview")).to_be_visible()


def test_generate_watch_progress_then_png_info_back_to_txt2img(page, tmp_path):
    expect(page.locator(f"{T2I} select[name=sampler_name] option")).not_to_have_count(0)
    page.fill(f"{T2I} textarea[name=prompt]", "a <b>red</b> circle")
    page.fill(f"{T2I} input[name=steps]", "60")
    page.fill(f"{T2I} input[name=width]", "64")
    page.fill(f"{T2I} input[name=height]", "64")
    page.fill(f"{T2I} input[name=seed]", "42")
    page.select_option(f"{T2I} select[name=sampler_name]", "Euler")
    page.click(f"{T2I} .generate")

    watch_progress(page, T2I)
    shot(page, "txt2img-progress")

    result = page.locator(f"{T2I} .gallery img.result")
    expect(result).to_have_count(1, timeout=60_000)
    expect(page.locator(f"{T2I} .infotext")).to_contain_text("Seed: 42")
    expect(page.locator(f"{T2I} .infotext")).to_contain_text("a <b>red</b> circle")  # text, not HTML
    assert page.locator(f"{T2I} .infotext b").count() == 0
    assert natural_size(page, f"{T2I} .gallery img") == (64, 64)
    shot(page, "txt2img-done")

    source = result.get_attribute("src")
    png = tmp_path / "made.png"
    png.write_bytes(httpx.get(f"{page.base_url}/{source}").content)
    page.fill(f"{T2I} textarea[name=prompt]", "")  # so that "Send to txt2img" has something to restore
    page.fill(f"{T2I} input[name=seed]", "-1")
    page.click("[data-tab=pnginfo]")
    page.set_input_files("#png-file", str(png))
    expect(page.locator("#png-parameters")).to_contain_text("Steps: 60")
    shot(page, "png-info")
    page.click("#send-txt2img")
    expect(page.locator("[data-panel=txt2img]")).to_be_visible()
    expect(page.locator(f"{T2I} textarea[name=prompt]")).to_have_value("a <b>red</b> circle")
    expect(page.locator(f"{T2I} input[name=seed]")).to_have_value("42")
    expect(page.locator(f"{T2I} input[name=steps]")).to_have_value("60")


def test_tabs_show_the_queue_models_and_settings(page):
    page.fill(f"{T2I} input[name=steps]", "2")
    page.fill(f"{T2I} input[name=width]", "64")
    page.fill(f"{T2I} input[name=height]", "64")
    page.click(f"{T2I} .generate")
    expect(page.locator(f"{T2I} .gallery img.result")).to_have_count(1, timeout=60_000)
    page.click("[data-tab=queue]")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    expect(page.locator("#jobs tbody tr").first).to_contain_text("done")
    expect(page.locator("#past-images img")).to_have_count(1)
    shot(page, "queue")
    page.click("[data-tab=models]")
    expect(page.locator("#models-checkpoints")).to_contain_text(
        re.compile(r"tiny-sd1\.safetensors \[[0-9a-f]{10}\]")
    )
    shot(page, "models")
    page.click("[data-tab=settings]")
    expect(page.locator("#settings-form input[name=CLIP_stop_at_last_layers]")).to_have_value("1")
    page.fill("#settings-form input[name=CLIP_stop_at_last_layers]", "2")
    expect(page.locator("#optimizations input[name=s_min_uncond]")).to_have_value("0")
    page.fill("#optimizations input[name=s_min_uncond]", "1.5")
    page.select_option("#optimizations select[name=sd_vae_decode_method]", "Full")
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#message")).to_have_text("settings saved")
    saved = httpx.get(f"{page.base_url}/sdapi/v1/options").json()
    assert saved["s_min_uncond"] == 1.5 and saved["token_merging_ratio"] == 0
    httpx.post(f"{page.base_url}/sdapi/v1/options", json={"s_min_uncond": 0})
    assert httpx.get(f"{page.base_url}/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    shot(page, "settings")


def test_errors_are_one_clear_message(page):
    page.fill(f"{T2I} input[name=width]", "65")
    page.click(f"{T2I} .generate")
    expect(page.locator("#message")).to_contain_text("width")
    expect(page.locator("#message")).to_contain_text("multiple of 8")
    expect(page.locator(f"{T2I} .generate")).to_be_enabled()


def test_extras_tab_upscales_an_uploaded_image(page, tmp_path):
    source = tmp_path / "small.png"
    Image.new("RGB", (10, 8), (30, 90, 240)).save(source)
    page.click("[data-tab=extras]")
    page.set_input_files("#extras-paint .paint-file", str(source))
    page.select_option("#extras-form select[name=upscaler_1]", "Nearest")
    page.fill("#extras-form input[name=upscaling_resize]", "3")
    page.click("#extras-form button[type=submit]")
    expect(page.locator("#extras-result")).to_be_visible()
    assert natural_size(page, "#extras-result") == (30, 24)
    expect(page.locator("#extras-info")).to_contain_text("30x24")
    shot(page, "extras")


def paint_stroke(page, paint: str, points: list[tuple[float, float]]) -> None:
    """Drag the mouse over the canvas through `points` (fractions of its width and height)."""
    box = page.locator(f"{paint} .paint-layers").bounding_box()
    assert box is not None and box["width"] > 100, box
    x, y = (box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
    page.mouse.move(x, y)
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=6)
    page.mouse.up()


def decode_data_url(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1])))
    image.load()
    return image


def submitted_job(page, click: str) -> dict:
    """Click `click` and return the JSON the page posts to the job API."""
    with page.expect_request(lambda r: r.url.endswith("/sfumato/v1/jobs") and r.method == "POST") as posted:
        page.click(click)
    return json.loads(posted.value.post_data)


def result_image(page, selector: str) -> Image.Image:
    source = page.locator(selector).get_attribute("src")
    return Image.open(io.BytesIO(httpx.get(f"{page.base_url}/{source}").content)).convert("RGB")


def test_img2img_inpaint_with_a_mask_painted_by_mouse(page, tmp_path):
    picture = Image.effect_noise((64, 64), 50).convert("RGB")
    picture.save(tmp_path / "init.png")
    page.click("[data-tab=img2img]")
    page.set_input_files("#img2img-paint .paint-file", str(tmp_path / "init.png"))
    expect(page.locator("#img2img-paint .paint-layers")).to_be_visible()
    expect(page.locator(f"{I2I} .inpaint-settings")).to_be_hidden()
    page.click(f"{I2I} .modes [data-mode=inpaint]")
    expect(page.locator(f"{I2I} .inpaint-settings")).to_be_visible()
    page.locator("#img2img-paint .brush-size").evaluate("(el) => { el.value = 64; }")
    paint_stroke(page, "#img2img-paint", [(0.1, 0.1), (0.35, 0.15), (0.2, 0.35)])  # the top-left corner
    page.fill(f"{I2I} textarea[name=prompt]", "a blue square")
    page.fill(f"{I2I} input[name=steps]", "60")
    page.fill(f"{I2I} input[name=seed]", "3")
    page.select_option(f"{I2I} select[name=sampler_name]", "Euler")
    shot(page, "img2img-inpaint-mask")

    job = submitted_job(page, f"{I2I} .generate")
    request = job["request"]
    assert job["kind"] == "img2img" and "width" not in request  # the init image's size
    assert decode_data_url(request["init_images"][0]).convert("RGB").tobytes() == picture.tobytes()
    mask = decode_data_url(request["mask"]).convert("L")
    assert mask.size == (64, 64)
    assert (
        mask.getpixel((10, 8)) == 255
        and mask.getpixel((50, 50)) == 0
        and set(mask.getdata()) <= set(range(256))
    )
    assert request["inpainting_fill"] == 1 and request["inpaint_full_res"] is False  # A1111 UI defaults
    assert request["mask_blur"] == 4 and request["inpaint_full_res_padding"] == 32
    assert request["inpainting_mask_invert"] == 0 and request["resize_mode"] == 0
    assert request["denoising_strength"] == 0.75 and "script_name" not in request

    watch_progress(page, I2I)
    expect(page.locator(f"{I2I} .gallery img.result")).to_have_count(1, timeout=60_000)
    expect(page.locator(f"{I2I} .infotext")).to_contain_text("Denoising strength: 0.75")
    expect(page.locator(f"{I2I} .infotext")).to_contain_text("Mask blur: 4")
    made = result_image(page, f"{I2I} .gallery img.result")
    assert made.size == (64, 64)
    assert made.crop((44, 44, 64, 64)).tobytes() == picture.crop((44, 44, 64, 64)).tobytes()  # unmasked
    assert made.crop((0, 0, 16, 16)).tobytes() != picture.crop((0, 0, 16, 16)).tobytes()  # repainted
    shot(page, "img2img-inpaint-done")

    # The eraser, invert and clear change what is sent.
    page.click("#img2img-paint [data-tool=eraser]")
    paint_stroke(page, "#img2img-paint", [(0.05, 0.05), (0.4, 0.4)])
    page.click("#img2img-paint .paint-invert")
    page.click(f"{I2I} .modes [data-mode=inpaint]")
    inverted = decode_data_url(submitted_job(page, f"{I2I} .generate")["request"]["mask"]).convert("L")
    assert inverted.getpixel((50, 50)) == 255 and inverted.getpixel((8, 8)) == 255  # erased, then inverted
    expect(page.locator(f"{I2I} .generate")).to_be_enabled(timeout=60_000)
    page.click("#img2img-paint .paint-clear")
    page.click(f"{I2I} .generate")
    expect(page.locator("#message")).to_contain_text("paint over the area")


def drop_file(page, target: str, path: Path, mime: str = "image/png") -> None:
    """Drop a file on `target` as a person dragging it from their file manager would."""
    data = base64.b64encode(path.read_bytes()).decode()
    page.evaluate(
        """([selector, data, name, mime]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            const target = document.querySelector(selector);
            for (const type of ["dragover", "drop"]) {
                target.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }
        }""",
        [target, data, path.name, mime],
    )


def test_sketch_strokes_are_part_of_the_init_image(page, tmp_path):
    white = Image.new("RGB", (64, 48), "white")
    white.save(tmp_path / "white.png")
    page.click("[data-tab=img2img]")
    drop_file(page, "#img2img-paint .paint-stage", tmp_path / "white.png")
    expect(page.locator("#img2img-paint .paint-layers")).to_be_visible()
    page.click(f"{I2I} .modes [data-mode=sketch]")
    expect(page.locator("#img2img-paint .brush-colour")).to_be_visible()
    expect(page.locator("#img2img-paint .paint-invert")).to_be_hidden()  # a mask tool
    page.locator("#img2img-paint .brush-colour").fill("#0000ff")
    paint_stroke(page, "#img2img-paint", [(0.2, 0.5), (0.8, 0.5)])
    shot(page, "img2img-sketch")
    page.fill(f"{I2I} input[name=steps]", "2")
    page.fill(f"{I2I} input[name=denoising_strength]", "0.3")
    request = submitted_job(page, f"{I2I} .generate")["request"]
    sent = decode_data_url(request["init_images"][0]).convert("RGB")
    assert sent.size == (64, 48) and "mask" not in request
    assert sent.getpixel((32, 24)) == (0, 0, 255)  # the stroke
    assert sent.getpixel((2, 2)) == (255, 255, 255)  # the picture elsewhere
    expect(page.locator(f"{I2I} .gallery img.result")).to_have_count(1, timeout=60_000)
    assert natural_size(page, f"{I2I} .gallery img.result") == (64, 48)


def test_outpainting_from_the_img2img_tab(page, tmp_path):
    picture = Image.effect_noise((64, 64), 50).convert("RGB")
    picture.save(tmp_path / "init.png")
    page.click("[data-tab=img2img]")
    page.set_input_files("#img2img-paint .paint-file", str(tmp_path / "init.png"))
    page.select_option(f"{I2I} select[name=script_name]", "Poor man's outpainting")
    expect(page.locator(f"{I2I} fieldset.outpaint")).to_be_visible()
    page.fill(f"{I2I} input[name=outpaint_pixels]", "32")
    page.fill(f"{I2I} input[name=outpaint_mask_blur]", "0")
    page.uncheck(f"{I2I} input[name=outpaint_direction][value=up]")
    page.uncheck(f"{I2I} input[name=outpaint_direction][value=down]")
    page.fill(f"{I2I} input[name=steps]", "2")
    page.fill(f"{I2I} input[name=denoising_strength]", "1")
    request = submitted_job(page, f"{I2I} .generate")["request"]
    assert request["script_name"] == "Poor man's outpainting"
    assert request["script_args"] == [32, 0, 0, ["left", "right"]]
    expect(page.locator(f"{I2I} .gallery img.result")).to_have_count(1, timeout=60_000)
    assert natural_size(page, f"{I2I} .gallery img.result") == (128, 64)
    made = result_image(page, f"{I2I} .gallery img.result")
    assert made.crop((32, 0, 96, 64)).tobytes() == picture.tobytes()  # the picture, in the middle
    shot(page, "img2img-outpaint")


def test_sd_upscale_from_the_img2img_tab(page, tmp_path):
    picture = Image.effect_noise((32, 32), 50).convert("RGB")
    picture.save(tmp_path / "init.png")
    page.click("[data-tab=img2img]")
    page.set_input_files("#img2img-paint .paint-file", str(tmp_path / "init.png"))
    page.click(f"{I2I} .modes [data-mode=inpaint]")  # a painted mask is not sent with the script
    paint_stroke(page, "#img2img-paint", [(0.2, 0.2), (0.6, 0.6)])
    expect(page.locator(f"{I2I} fieldset.sd-upscale")).to_be_hidden()
    page.select_option(f"{I2I} select[name=script_name]", "SD upscale")
    expect(page.locator(f"{I2I} fieldset.sd-upscale")).to_be_visible()
    expect(page.locator(f"{I2I} fieldset.outpaint")).to_be_hidden()
    expect(page.locator(f"{I2I} fieldset.sd-upscale")).to_contain_text("size of each tile")
    expect(page.locator(f"{I2I} select[name=sd_upscale_upscaler] option")).not_to_have_count(0)
    page.select_option(f"{I2I} select[name=sd_upscale_upscaler]", "Lanczos")
    page.fill(f"{I2I} input[name=sd_upscale_scale]", "2")
    expect(page.locator(f"{I2I} input[name=sd_upscale_overlap]")).to_have_value("64")  # A1111's default
    page.fill(f"{I2I} input[name=sd_upscale_overlap]", "16")  # less than the tile
    page.fill(f"{I2I} input[name=width]", "32")
    page.fill(f"{I2I} input[name=height]", "32")
    page.fill(f"{I2I} input[name=steps]", "2")
    page.fill(f"{I2I} input[name=denoising_strength]", "0")
    shot(page, "img2img-sd-upscale")
    job = submitted_job(page, f"{I2I} .generate")
    request = job["request"]
    assert job["kind"] == "img2img" and request["script_name"] == "SD upscale"
    assert request["script_args"] == ["", 16, "Lanczos", 2]
    assert "mask" not in request
    assert not [key for key in request if key.startswith(("sd_upscale", "outpaint"))]  # fields, not args
    expect(page.locator(f"{I2I} .gallery img.result")).to_have_count(1, timeout=60_000)
    expect(page.locator("#message")).to_be_hidden()
    assert natural_size(page, f"{I2I} .gallery img.result") == (64, 64)
    made = result_image(page, f"{I2I} .gallery img.result")
    assert made.tobytes() == picture.resize((64, 64), Image.Resampling.LANCZOS).tobytes()  # strength 0
    expect(page.locator(f"{I2I} .infotext")).to_contain_text("SD upscale upscaler: Lanczos")


def test_gif2gif_from_the_img2img_tab(page, tmp_path):
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((200, 40, 40), (40, 200, 40), (40, 40, 200))]
    for number, frame in enumerate(frames):
        frame.paste((250, 250, 250), (4 + 8 * number, 8, 12 + 8 * number, 24))  # a bar moving right
    source = tmp_path / "moving.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=[100, 200, 300], loop=0)
    page.click("[data-tab=img2img]")  # no init image: gif2gif does not use the canvas
    page.select_option(f"{I2I} select[name=script_name]", "gif2gif")
    script = page.locator(f"{I2I} fieldset.gif2gif")
    expect(script).to_be_visible()
    expect(script).to_contain_text("same seed")
    page.click(f"{I2I} .generate")  # no file yet
    expect(page.locator("#message")).to_have_text("gif2gif: choose an animation file first")
    page.set_input_files(f"{I2I} input[name=animation_file]", str(source))
    page.fill(f"{I2I} textarea[name=prompt]", "a moving bar")
    page.fill(f"{I2I} input[name=steps]", "20")
    page.fill(f"{I2I} input[name=width]", "64")
    page.fill(f"{I2I} input[name=height]", "64")
    page.fill(f"{I2I} input[name=seed]", "5")
    page.fill(f"{I2I} input[name=denoising_strength]", "0.5")
    page.select_option(f"{I2I} select[name=sampler_name]", "Euler")

    job = submitted_job(page, f"{I2I} .generate")
    request = job["request"]
    assert job["kind"] == "gif2gif" and request["animation_format"] == "gif"
    assert base64.b64decode(request["animation"]) == source.read_bytes()  # the file as it is
    assert not {"init_images", "mask", "script_name", "script_args", "animation_file"} & set(request)
    watch_progress(page, I2I)
    animation = page.locator(f"{I2I} .gallery img.animation")
    expect(animation).to_be_visible(timeout=120_000)
    expect(page.locator("#message")).to_be_hidden()
    expect(page.locator(f"{I2I} .gallery img.result")).to_have_count(3)  # the frames
    made = next(j for j in httpx.get(f"{page.base_url}/sfumato/v1/jobs").json() if j["kind"] == "gif2gif")
    images = httpx.get(f"{page.base_url}/sfumato/v1/jobs/{made['id']}").json()["images"]
    assert [image["index"] for image in images] == [0, 1, 2, 3]
    src = animation.get_attribute("src")
    assert src == f"sfumato/v1/jobs/{made['id']}/images/3"  # the job's last image
    with Image.open(io.BytesIO(httpx.get(f"{page.base_url}/{src}").content)) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3 and gif.size == (64, 64)
    assert natural_size(page, f"{I2I} .gallery img.animation") == (64, 64)
    expect(page.locator(f"{I2I} .infotext")).to_contain_text("Seed: 5")
    shot(page, "img2img-gif2gif")


def test_gif2gif_of_a_video_shows_a_video_player(page, tmp_path):
    from sfumato.imaging.video import write_video

    frames = [Image.new("RGB", (32, 32), (60 * n, 90, 200 - 60 * n)) for n in range(3)]
    clip = write_video(frames, [100, 100, 100], tmp_path / "clip.webm")
    page.click("[data-tab=img2img]")
    page.select_option(f"{I2I} select[name=script_name]", "gif2gif")
    page.set_input_files(f"{I2I} input[name=animation_file]", str(clip))
    page.fill(f"{I2I} input[name=steps]", "2")
    page.fill(f"{I2I} input[name=width]", "32")
    page.fill(f"{I2I} input[name=height]", "32")
    assert submitted_job(page, f"{I2I} .generate")["request"]["animation_format"] == "webm"
    video = page.locator(f"{I2I} .gallery video.animation")
    expect(video).to_be_visible(timeout=120_000)
    expect(page.locator(f"{I2I} .gallery img.result")).to_have_count(3)
    assert video.get_attribute("controls") is not None
    assert re.fullmatch(r"sfumato/v1/jobs/\w+/images/3", video.get_attribute("src") or "")
    page.wait_for_function(  # Chromium reads it: the file and its media type are a video it plays
        "document.querySelector('#img2img-form video.animation').readyState >= 1", timeout=30_000
    )
    page.click("[data-tab=queue]")
    expect(page.locator("#past-images video.thumb")).to_have_count(1)  # the gallery shows it as a video
    expect(page.locator("#past-images img.thumb")).to_have_count(3)


def test_png_info_sends_parameters_and_image_to_img2img(page, tmp_path):
    made = httpx.post(
        f"{page.base_url}/sdapi/v1/txt2img",
        json={**TINY, "prompt": "a green star", "seed": 77, "steps": 3},
        timeout=120,
    ).json()
    png = tmp_path / "made.png"
    png.write_bytes(base64.b64decode(made["images"][0]))
    page.click("[data-tab=pnginfo]")
    page.set_input_files("#png-file", str(png))
    expect(page.locator("#png-parameters")).to_contain_text("Seed: 77")
    page.click("#send-img2img")
    expect(page.locator("[data-panel=img2img]")).to_be_visible()
    expect(page.locator(f"{I2I} textarea[name=prompt]")).to_have_value("a green star")
    expect(page.locator(f"{I2I} input[name=seed]")).to_have_value("77")
    expect(page.locator(f"{I2I} input[name=steps]")).to_have_value("3")
    expect(page.locator("#img2img-paint .paint-layers")).to_be_visible()
    request = submitted_job(page, f"{I2I} .generate")["request"]
    sent = decode_data_url(request["init_images"][0]).convert("RGB")
    assert sent.tobytes() == Image.open(png).convert("RGB").tobytes()
    assert request["seed"] == 77 and request["prompt"] == "a green star"
    expect(page.locator(f"{I2I} .gallery img.result")).to_have_count(1, timeout=60_000)
    expect(page.locator(f"{I2I} .infotext")).to_contain_text("Seed: 77")


def test_extras_clean_removes_a_painted_object(page, tmp_path):
    picture = Image.new("RGB", (48, 48), (245, 245, 245))
    picture.paste((210, 30, 30), (20, 20, 28, 28))  # a red square in the middle
    picture.save(tmp_path / "object.png")
    page.click("[data-tab=extras]")
    page.set_input_files("#extras-paint .paint-file", str(tmp_path / "object.png"))
    page.locator("#extras-paint .brush-size").evaluate("(el) => { el.value = 96; }")
    paint_stroke(page, "#extras-paint", [(0.35, 0.45), (0.65, 0.45)])
    paint_stroke(page, "#extras-paint", [(0.35, 0.55), (0.65, 0.55)])
    page.select_option("#extras-form select[name=clean_method]", "ns")
    shot(page, "extras-clean-mask")
    page.click("#clean")
    expect(page.locator("#extras-info")).to_contain_text("Cleaned (ns)")
    cleaned = decode_data_url(page.locator("#extras-result").get_attribute("src")).convert("RGB")
    assert cleaned.size == (48, 48)
    assert min(cleaned.getpixel((24, 24))) > 200, cleaned.getpixel((24, 24))  # the square is gone
    assert cleaned.getpixel((3, 3)) == (245, 245, 245)
    shot(page, "extras-clean")
    page.click("#extras-paint .paint-clear")
    page.click("#clean")
    expect(page.locator("#message")).to_contain_text("paint over what to remove")


def test_txt2img_hires_fix_doubles_the_size(page):
    expect(page.locator(f"{T2I} select[name=hr_upscaler] option")).not_to_have_count(0)
    expect(page.locator(f"{T2I} fieldset.hires")).to_be_hidden()
    page.check(f"{T2I} input[name=enable_hr]")
    expect(page.locator(f"{T2I} fieldset.hires")).to_be_visible()
    options = page.locator(f"{T2I} select[name=hr_upscaler] option").all_text_contents()
    assert options[0] == "Latent" and "Latent (nearest-exact)" in options and "Lanczos" in options
    page.select_option(f"{T2I} select[name=hr_upscaler]", "Latent (bicubic)")
    page.fill(f"{T2I} input[name=hr_second_pass_steps]", "1")
    page.fill(f"{T2I} input[name=steps]", "2")
    page.fill(f"{T2I} input[name=width]", "64")
    page.fill(f"{T2I} input[name=height]", "64")
    request = submitted_job(page, f"{T2I} .generate")["request"]
    assert request["enable_hr"] is True and request["hr_scale"] == 2 and request["denoising_strength"] == 0.7
    expect(page.locator(f"{T2I} .gallery img.result")).to_have_count(1, timeout=60_000)
    assert natural_size(page, f"{T2I} .gallery img.result") == (128, 128)
    expect(page.locator(f"{T2I} .infotext")).to_contain_text("Hires upscale: 2")
    expect(page.locator(f"{T2I} .infotext")).to_contain_text("Hires upscaler: Latent (bicubic)")
    shot(page, "txt2img-hires")


def test_networks_picker_puts_loras_and_embeddings_in_the_prompt(networks_page, data_dir, tiny_models):
    page = networks_page
    prompt = page.locator(f"{T2I} textarea[name=prompt]")
    picker = page.locator(f"{T2I} .networks")
    cards = picker.locator(".card")
    expect(cards).to_have_count(3)
    page.click(f"{T2I} .networks summary")
    style, xl, mystyle = (
        picker.locator(".card", has_text=name) for name in ("style", "xl-detail", "mystyle")
    )
    expect(style.first).to_contain_text("SD1 · rank 4")
    expect(style.first).to_contain_text("triggers: painterly, soft light")
    expect(picker.locator(".networks-embeddings .card")).to_contain_text("2 vectors")
    assert "other-family" not in (style.first.get_attribute("class") or "")
    assert "other-family" in (xl.get_attribute("class") or "")  # an SDXL LoRA on an SD1 checkpoint
    title = xl.get_attribute("title") or ""
    assert "another family" in title and "SDXL" in title

    page.fill(f"{T2I} .networks-search", "painterly")  # a trigger word finds its LoRA
    expect(picker.locator(".card:visible")).to_have_count(1)
    page.fill(f"{T2I} .networks-search", "STY")  # names, ignoring case
    expect(picker.locator(".card:visible")).to_have_count(2)
    expect(xl).to_be_hidden()

    style_card = picker.locator(".networks-loras .card", has_text="style")
    page.fill(f"{T2I} textarea[name=prompt]", "a red circle")
    style_card.click()
    expect(prompt).to_have_value("a red circle <lora:style:1>")
    expect(style_card).to_have_attribute("aria-pressed", "true")
    style_card.click()  # again: taken out
    expect(prompt).to_have_value("a red circle")
    expect(style_card).to_have_attribute("aria-pressed", "false")
    page.fill(f"{T2I} textarea[name=prompt]", "<lora:style:0.6> a red circle")  # typed with its own weight
    expect(style_card).to_have_attribute("aria-pressed", "true")
    style_card.click()
    expect(prompt).to_have_value("a red circle")
    style_card.click()
    mystyle.click()
    expect(prompt).to_have_value("a red circle <lora:style:1> mystyle")
    page.fill(f"{T2I} .networks-search", "")
    expect(cards).to_have_count(3)
    expect(picker.locator(".card[aria-pressed=true]")).to_have_count(2)
    shot(page, "networks-picker")
    expect(page.locator(f"{I2I} textarea[name=prompt]")).to_have_value("")  # each tab has its own

    page.fill(f"{T2I} input[name=steps]", "2")
    page.fill(f"{T2I} input[name=width]", "64")
    page.fill(f"{T2I} input[name=height]", "64")
    page.click(f"{T2I} .generate")
    expect(page.locator(f"{T2I} .gallery img.result")).to_have_count(1, timeout=60_000)
    expect(page.locator(f"{T2I} .infotext")).to_contain_text(
        re.compile(r'Lora hashes: "style: [0-9a-f]{12}"')
    )
    expect(page.locator(f"{T2I} .infotext")).to_contain_text("TI hashes")

    page.click("[data-tab=img2img]")  # the img2img tab's own picker writes into its own prompt
    page.click(f"{I2I} .networks summary")
    page.locator(f"{I2I} .networks-loras .card", has_text="style").click()
    expect(page.locator(f"{I2I} textarea[name=prompt]")).to_have_value("<lora:style:1>")
    new = kohya_lora(tiny_models["sd1"][1], seed=2)
    write_network(data_dir / "models" / "Lora" / "new-one.safetensors", new)
    page.click(f"{I2I} .networks-refresh")  # reads the folders again
    expect(page.locator(f"{I2I} .networks-loras .card")).to_have_count(3)
    expect(page.locator(f"{I2I} .networks-loras .card", has_text="style")).to_have_attribute(
        "aria-pressed", "true"
    )

    page.click("[data-tab=models]")
    row = page.locator("#models-loras .lora-entry", has_text="style").first
    expect(row.locator("summary")).to_contain_text("SD1")
    expect(row.locator("summary")).to_contain_text("painterly, soft light")
    expect(row.locator("dl")).to_be_hidden()
    row.locator("summary").click()
    expect(row.locator("dl")).to_contain_text("ss_base_model_version")
    expect(row.locator("dl")).to_contain_text("sd_v1")
    shot(page, "models-loras")


@pytest.fixture
def tools_page(data_dir, tiny_models):
    """The page over two more SD1 checkpoints (a, b) and a LoRA, for the Merge and Extract tabs."""
    from sfumato.testing.tiny_models import write_single_file

    for name, seed in (("a", 1), ("b", 2)):
        write_single_file(data_dir / "models" / "Stable-diffusion" / f"{name}.safetensors", "sd1", seed=seed)
    (data_dir / "models" / "Lora").mkdir(parents=True)
    write_network(data_dir / "models" / "Lora" / "style.safetensors", kohya_lora(tiny_models["sd1"][1]))
    yield from open_page(data_dir)


def title_of(page, name: str) -> str:
    models = httpx.get(f"{page.base_url}/sdapi/v1/sd-models").json()
    return next(m["title"] for m in models if m["model_name"] == name)


def test_merge_and_extract_tabs_make_models_the_page_lists(tools_page, data_dir):
    page = tools_page
    merge, bake, extract = "#merge-form", "#bake-form", "#extract-form"
    page.click("[data-tab=merge]")
    expect(page.locator(f"{merge} select[name=model_a] option")).to_have_count(4)  # 3 + the embedded model
    expect(page.locator(f"{merge} .model-c")).to_be_hidden()
    page.check(f"{merge} input[name=mode][value=add-diff]")
    expect(page.locator(f"{merge} .model-c")).to_be_visible()
    page.check(f"{merge} input[name=mode][value=weighted]")
    expect(page.locator(f"{merge} .model-c")).to_be_hidden()
    page.select_option(f"{merge} select[name=model_a]", title_of(page, "a"))
    page.select_option(f"{merge} select[name=model_b]", title_of(page, "b"))
    page.locator(f"{merge} input[name=alpha_slider]").fill("0.3")  # the slider moves the number
    expect(page.locator(f"{merge} input[name=alpha]")).to_have_value("0.3")
    expect(page.locator(f"{merge} .alpha-hint")).to_contain_text("70% A, 30% B")
    page.fill(f"{merge} input[name=name]", "../escape")
    page.click(f"{merge} button[type=submit]")
    expect(page.locator("#message")).to_contain_text("without folders")
    page.fill(f"{merge} input[name=name]", "a-b-mix")
    with page.expect_request(lambda r: r.url.endswith("/sfumato/v1/merge")) as posted:
        page.click(f"{merge} button[type=submit]")
    sent = json.loads(posted.value.post_data)
    assert sent["models"] == [title_of(page, "a"), title_of(page, "b")] and sent["alpha"] == 0.3
    assert sent["mode"] == "weighted" and sent["dtype"] == "fp16" and "vae" not in sent
    made = data_dir / "models" / "Stable-diffusion" / "a-b-mix.safetensors"
    expect(page.locator(f"{merge} .tool-result")).to_contain_text(str(made.resolve()), timeout=60_000)
    expect(page.locator(f"{merge} button[type=submit]")).to_have_text("Merge")
    expect(page.locator("#message")).to_be_hidden()
    expect(page.locator("#checkpoint option", has_text="a-b-mix.safetensors")).to_have_count(1)
    expect(page.locator(f"{extract} select[name=tuned] option", has_text="a-b-mix")).to_have_count(1)
    expect(page.locator("#checkpoint")).to_have_value(title_of(page, "a"))  # still the one in use

    expect(page.locator(f"{bake} .bake-lora")).to_have_count(1)
    page.select_option(f"{bake} select[name=model]", title_of(page, "a"))
    page.check(f"{bake} .bake-lora input[type=checkbox]")
    page.fill(f"{bake} .bake-lora .weight", "0.7")
    page.fill(f"{bake} input[name=name]", "a-styled")
    page.click(f"{bake} button[type=submit]")
    expect(page.locator(f"{bake} .tool-result")).to_contain_text("style:0.7", timeout=60_000)
    expect(page.locator("#checkpoint option", has_text="a-styled.safetensors")).to_have_count(1)
    expect(page.locator("#message")).to_be_hidden()
    shot(page, "merge")
    page.click(f"{merge} button[type=submit]")  # again: the file exists now
    expect(page.locator("#message")).to_contain_text("already exists")
    expect(page.locator(f"{merge} button[type=submit]")).to_be_enabled()

    page.click("[data-tab=extract]")
    page.select_option(f"{extract} select[name=tuned]", title_of(page, "a-b-mix"))
    page.select_option(f"{extract} select[name=base]", title_of(page, "a"))
    page.fill(f"{extract} input[name=dim]", "4")
    page.fill(f"{extract} input[name=name]", "mix-diff")
    page.click(f"{extract} button[type=submit]")
    result = page.locator(f"{extract} .tool-result")
    expect(result).to_contain_text("Layers", timeout=60_000)
    expect(result).to_contain_text("<lora:mix-diff:1>")
    expect(result).to_contain_text("Max relative error")
    layers = int(result.locator("dt:text-is('Layers') + dd").text_content())
    assert layers > 0
    assert (data_dir / "models" / "Lora" / "mix-diff.safetensors").is_file()
    expect(page.locator(f"{T2I} .networks-loras .card", has_text="mix-diff")).to_have_count(1)
    shot(page, "extract")
