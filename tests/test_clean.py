"""Object removal with OpenCV (`sfumato clean`) and the Extras CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.cli import main
from sfumato.errors import UserError
from sfumato.settings import Settings
from sfumato.tasks.clean import clean_image, clean_method_names
from sfumato.testing.tiny_image_models import build_lama, write_lama
from sfumato.upscalers.models import ImageModels


def smooth_picture() -> Image.Image:
    y, x = np.mgrid[0:64, 0:96].astype(np.float32)
    rgb = np.stack([x / 95 * 200 + 20, y / 63 * 180 + 40, 128 + 60 * np.sin(x / 30)], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8))


def hole(size=(96, 64), box=(40, 20, 56, 36)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_a_hole_in_a_smooth_picture_is_filled_with_a_small_error(method):
    truth = np.asarray(smooth_picture()).astype(float)
    damaged = smooth_picture()
    damaged.paste((255, 0, 255), (40, 20, 56, 36))  # the "object"
    result, notes = clean_image(damaged, hole(), method=method)
    out = np.asarray(result).astype(float)
    assert notes == []
    assert np.abs(out[20:36, 40:56] - truth[20:36, 40:56]).mean() < 6  # the magenta object was ~150 off
    outside = np.asarray(hole()) == 0
    np.testing.assert_array_equal(out[outside], np.asarray(damaged).astype(float)[outside])


def test_a_mask_of_another_size_is_resized_with_a_note():
    result, notes = clean_image(smooth_picture(), hole((48, 32), (20, 10, 28, 18)))
    assert result.size == (96, 64) and "resized" in notes[0]


def test_clean_and_upscale_from_the_cli(tmp_path, capsys):
    smooth_picture().save(tmp_path / "in.png")
    hole().save(tmp_path / "mask.png")
    common = ["--data-dir", str(tmp_path)]
    assert main(["clean", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), *common]) == 0
    assert main(["upscale", str(tmp_path / "in.png"), "--scale", "2", *common]) == 0
    cleaned, upscaled = capsys.readouterr().out.split()
    assert cleaned.endswith("00000.png") and "extras-images" in cleaned
    with Image.open(upscaled) as image:
        assert image.size == (192, 128)
        parameters = image.text["parameters"]
    assert parameters == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"  # A1111's Extras keys
    assert main(["clean", str(tmp_path / "in.png"), "--mask", str(tmp_path / "nope.png"), *common]) == 2
    assert main(["upscale", str(tmp_path / "in.png"), "--upscaler", "Bogus", *common]) == 2
    err = capsys.readouterr().err
    assert "mask" in err and "Bogus" in err


@pytest.fixture(scope="module")
def lama():
    """big-lama's architecture with random weights, rounded to fp16 as the file stores them."""
    network = build_lama()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(parameter.half().float())
    return network


def test_a_lama_model_from_models_inpaint_fills_the_hole(tmp_path, lama, capsys):
    (tmp_path / "models" / "inpaint").mkdir(parents=True)
    write_lama(tmp_path / "models" / "inpaint" / "big-lama.safetensors", lama)
    models = ImageModels(Settings(data_dir=tmp_path), "inpaint")
    assert clean_method_names(models) == ["telea", "ns", "sd", "big-lama"]
    damaged = smooth_picture()
    result, _ = clean_image(damaged, hole(), method="big-lama", models=models)
    with torch.no_grad():  # the network itself on the same input: what spandrel's LaMa must give
        pixels = torch.from_numpy(np.asarray(damaged, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        holes = torch.from_numpy(np.asarray(hole(), dtype=np.float32) / 255)[None, None]
        expected = (lama(pixels, holes).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round()
    out = np.asarray(result).astype(float)
    inside = np.asarray(hole()) > 0
    assert np.abs(out[inside] - expected[inside]).max() <= 1
    np.testing.assert_array_equal(out[~inside], np.asarray(damaged).astype(float)[~inside])
    with pytest.raises(UserError, match="not an upscaler"):
        ImageModels(Settings(data_dir=tmp_path), "inpaint").get("big-lama", field="x").upscale_once(damaged)
    smooth_picture().save(tmp_path / "in.png")
    hole().save(tmp_path / "mask.png")
    argv = [
        "clean",
        str(tmp_path / "in.png"),
        "--mask",
        str(tmp_path / "mask.png"),
        "--data-dir",
        str(tmp_path),
    ]
    assert main([*argv, "--method", "big-lama"]) == 0
    with Image.open(capsys.readouterr().out.strip()) as saved:
        assert saved.text["parameters"] == "Clean method: big-lama"
    assert main([*argv, "--method", "big-lam"]) == 2
    assert "big-lama" in capsys.readouterr().err


def test_sd_mode_inpaints_a_telea_fill_with_the_checkpoint(data_dir, capsys):
    smooth_picture().save(data_dir / "in.png")
    hole().save(data_dir / "mask.png")
    argv = [
        "clean",
        str(data_dir / "in.png"),
        "--mask",
        str(data_dir / "mask.png"),
        "--data-dir",
        str(data_dir),
    ]
    assert main([*argv, "--method", "sd", "--prompt", "grass", "--steps", "3", "--seed", "5"]) == 0
    path = capsys.readouterr().out.strip()
    assert "extras-images" in path
    with Image.open(path) as saved:
        parameters = saved.text["parameters"]
        out = np.asarray(saved.convert("RGB")).astype(float)
    assert parameters.startswith("grass\n") and "Denoising strength: 0.75" in parameters
    telea = np.asarray(clean_image(smooth_picture(), hole())[0]).astype(float)
    assert np.abs(out[20:36, 40:56] - telea[20:36, 40:56]).mean() > 1  # the checkpoint repainted it
    far = np.ones((64, 96), bool)
    far[8:48, 28:68] = False  # outside the blurred mask (blur 4) nothing changes
    np.testing.assert_array_equal(out[far], np.asarray(smooth_picture()).astype(float)[far])
