"""Hires fix: the second pass's size, steps and upscalers, its infotext, and --from-png."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato import infotext
from sfumato.cli import main
from sfumato.errors import UserError
from sfumato.models.loader import load_single_file
from sfumato.request import build_request
from sfumato.tasks.common import RunControl
from sfumato.tasks.hires import hires_upscaler_names
from sfumato.tasks.txt2img import generate


@pytest.fixture(scope="module")
def model(tiny_models):
    return load_single_file(tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float32)


def hires(model, **fields):
    totals: list[int] = []
    request = build_request(
        **{"prompt": "a cat", "steps": 5, "seed": 2, "width": 64, "height": 64, "enable_hr": True, **fields}
    )
    result = generate(model, request, RunControl(on_step=lambda p: totals.append(p.total)))
    return result, totals


@pytest.mark.parametrize("upscaler", hires_upscaler_names())
def test_doubles_the_size_with_every_upscaler(model, upscaler):
    result, _ = hires(model, hr_upscaler=upscaler, hr_second_pass_steps=2)
    assert result.images[0].image.size == (128, 128)
    assert result.params["Hires upscaler"] == upscaler and result.params["Hires upscale"] == 2
    assert result.size == (64, 64)  # the infotext's Size is the first pass's


@pytest.mark.parametrize(("sampler", "strength"), [("Euler", 0.5), ("DPM++ 2M", 0.3), ("Euler a", 0.9)])
def test_the_second_pass_runs_exactly_its_steps(model, sampler, strength):
    # A1111 runs the hires pass with "exact steps": a schedule of int(N / s) steps, the last N run.
    _, totals = hires(model, hr_second_pass_steps=4, denoising_strength=strength, sampler_name=sampler)
    assert totals == [5] * 5 + [4] * 4


def test_strength_changes_the_second_pass_and_zero_skips_it(model):
    low, totals = hires(model, denoising_strength=0.0)
    assert totals == [5] * 5 and low.images[0].image.size == (128, 128)
    a = np.asarray(hires(model, denoising_strength=0.3)[0].images[0].image, dtype=int)
    b = np.asarray(hires(model, denoising_strength=0.8)[0].images[0].image, dtype=int)
    assert np.abs(a - b).mean() > 1


@pytest.mark.parametrize(
    ("resize", "size"),
    [((96, 0), (96, 72)), ((0, 96), (128, 96)), ((96, 96), (96, 96)), ((128, 64), (128, 64))],
)
def test_resize_to_a_size_keeps_the_aspect_or_crops(model, resize, size):
    result, _ = hires(model, height=48, hr_resize_x=resize[0], hr_resize_y=resize[1], hr_second_pass_steps=1)
    assert result.images[0].image.size == size
    assert (
        result.params["Hires resize"] == f"{resize[0]}x{resize[1]}" and "Hires upscale" not in result.params
    )


def test_unknown_upscaler_is_refused_before_sampling(model):
    with pytest.raises(UserError) as caught:
        hires(model, hr_upscaler="Latent (bicubc)")
    assert caught.value.field == "hr_upscaler" and "Latent (bicubic)" in str(caught.value)


def test_cli_hires_records_itself_and_from_png_regenerates_it(data_dir, capsys):
    common = ["--data-dir", str(data_dir), "--steps", "3", "--width", "64", "--height", "64"]
    code = main(
        ["txt2img", "a dog", "--seed", "4", "--hires", "--hires-steps", "2", "--hires-upscaler", "Lanczos",
         "--strength", "0.6", "--hires-prompt", "a big dog", *common]
    )  # fmt: skip
    (first,) = capsys.readouterr().out.split()
    assert code == 0
    with Image.open(first) as image:
        assert image.size == (128, 128)
        params = infotext.parse(image.text["parameters"])
    assert (params["Hires upscale"], params["Hires steps"], params["Hires upscaler"]) == ("2", "2", "Lanczos")
    assert params["Denoising strength"] == "0.6" and params["Hires prompt"] == "a big dog"
    assert params["Size-1"] == "64"
    assert main(["txt2img", "--from-png", first, "--data-dir", str(data_dir)]) == 0
    (again,) = capsys.readouterr().out.split()
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
