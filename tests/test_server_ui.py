"""The web UI driven in headless Chromium, as a person would use it; screenshots of the main tabs are
saved in `test-artifacts/screenshots/`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from server_helpers import running_server

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # Makefile installs Debian's


@pytest.fixture
def page(data_dir):
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


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_generate_watch_progress_then_png_info_back_to_txt2img(page, tmp_path):
    expect(page.locator("select[name=sampler_name] option")).not_to_have_count(0)
    page.fill("textarea[name=prompt]", "a <b>red</b> circle")
    page.fill("input[name=steps]", "60")
    page.fill("input[name=width]", "64")
    page.fill("input[name=height]", "64")
    page.fill("input[name=seed]", "42")
    page.select_option("select[name=sampler_name]", "Euler")
    page.click("#generate")

    bar = page.locator(".progress .bar")
    values: set[str] = set()
    for _ in range(400):  # the bar moves while the job runs
        value = bar.get_attribute("aria-valuenow")
        if value and page.locator(".progress").is_visible():
            values.add(value)
        if len(values) >= 3:
            break
        page.wait_for_timeout(25)
    assert len(values) >= 3, values
    expect(page.locator("#preview")).to_be_visible()
    shot(page, "txt2img-progress")

    result = page.locator("#gallery img.result")
    expect(result).to_have_count(1, timeout=60_000)
    expect(page.locator("#infotext")).to_contain_text("Seed: 42")
    expect(page.locator("#infotext")).to_contain_text("a <b>red</b> circle")  # shown as text, not HTML
    assert page.locator("#infotext b").count() == 0
    assert page.evaluate("document.querySelector('#gallery img').naturalWidth") == 64
    shot(page, "txt2img-done")

    source = result.get_attribute("src")
    png = tmp_path / "made.png"
    png.write_bytes(httpx.get(f"{page.base_url}/{source}").content)
    page.fill("textarea[name=prompt]", "")  # so that "Send to txt2img" has something to restore
    page.fill("input[name=seed]", "-1")
    page.click("[data-tab=pnginfo]")
    page.set_input_files("#png-file", str(png))
    expect(page.locator("#png-parameters")).to_contain_text("Steps: 60")
    shot(page, "png-info")
    page.click("#send-txt2img")
    expect(page.locator("[data-panel=txt2img]")).to_be_visible()
    expect(page.locator("textarea[name=prompt]")).to_have_value("a <b>red</b> circle")
    expect(page.locator("input[name=seed]")).to_have_value("42")
    expect(page.locator("input[name=steps]")).to_have_value("60")


def test_tabs_show_the_queue_models_and_settings(page):
    page.fill("input[name=steps]", "2")
    page.fill("input[name=width]", "64")
    page.fill("input[name=height]", "64")
    page.click("#generate")
    expect(page.locator("#gallery img.result")).to_have_count(1, timeout=60_000)
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
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#message")).to_have_text("settings saved")
    assert httpx.get(f"{page.base_url}/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    shot(page, "settings")


def test_errors_are_one_clear_message(page):
    page.fill("input[name=width]", "65")
    page.click("#generate")
    expect(page.locator("#message")).to_contain_text("width")
    expect(page.locator("#message")).to_contain_text("multiple of 8")
    expect(page.locator("#generate")).to_be_enabled()


def test_extras_tab_upscales_an_uploaded_image(page, tmp_path):
    source = tmp_path / "small.png"
    Image.new("RGB", (10, 8), (30, 90, 240)).save(source)
    page.click("[data-tab=extras]")
    page.set_input_files("#extras-file", str(source))
    page.select_option("#extras-form select[name=upscaler_1]", "Nearest")
    page.fill("#extras-form input[name=upscaling_resize]", "3")
    page.click("#extras-form button[type=submit]")
    expect(page.locator("#extras-result")).to_be_visible()
    assert page.evaluate("document.querySelector('#extras-result').naturalWidth") == 30
    expect(page.locator("#extras-info")).to_contain_text("30x24")
    shot(page, "extras")
