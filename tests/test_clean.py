"""Object removal with OpenCV (`sfumato clean`) and the Extras CLI."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sfumato.cli import main
from sfumato.tasks.clean import clean_image


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
