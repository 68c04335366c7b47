"""SD upscale (A1111's img2img script): tiles laid as A1111 lays them, blended back without a trace,
and the whole job from the CLI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from sfumato.cli import main
from sfumato.errors import UserError
from sfumato.tasks.sd_upscale import blend_tiles, tile_boxes


def test_tiles_cover_the_picture_evenly_with_the_overlap():
    assert tile_boxes(1024, 512, 512, 512, 64) == [(0, 0, 512, 512), (256, 0, 768, 512), (512, 0, 1024, 512)]
    boxes = tile_boxes(700, 300, 256, 128, 32)
    lefts = sorted({b[0] for b in boxes})
    tops = sorted({b[1] for b in boxes})
    assert lefts[0] == 0 and max(b[2] for b in boxes) == 700 and max(b[3] for b in boxes) == 300
    assert all(b - a <= 256 - 32 for a, b in itertools.pairwise(lefts))  # at least the overlap
    assert all(b - a <= 128 - 32 for a, b in itertools.pairwise(tops))
    assert tile_boxes(100, 80, 128, 128, 64) == [(0, 0, 100, 80)]  # smaller than a tile: one tile
    with pytest.raises(UserError, match="overlap"):
        tile_boxes(1000, 1000, 128, 128, 128)


def test_blending_the_tiles_of_a_picture_gives_the_picture_back():
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (150, 230, 3), dtype=np.uint8))
    boxes = tile_boxes(230, 150, 96, 64, 24)
    assert len(boxes) > 4
    assert blend_tiles(picture.size, [(b, picture.crop(b)) for b in boxes]).tobytes() == picture.tobytes()
    black = [
        (b, Image.new("RGB", (b[2] - b[0], b[3] - b[1]), "black" if i % 2 else "white"))
        for i, b in enumerate(boxes)
    ]
    mixed = np.asarray(blend_tiles(picture.size, black))
    assert 0 < mixed.mean() < 255 and len(np.unique(mixed)) > 10  # overlaps cross-fade, not a hard cut


def test_sd_upscale_from_the_cli(data_dir, capsys):
    rng = np.random.default_rng(1)
    init = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    init.save(data_dir / "in.png")
    argv = [
        "img2img",
        "a cat",
        "--init",
        str(data_dir / "in.png"),
        "--data-dir",
        str(data_dir),
        "--steps",
        "2",
    ]
    argv += [
        "--width",
        "48",
        "--height",
        "48",
        "--seed",
        "3",
        "--sd-upscale",
        "2",
        "--sd-upscale-overlap",
        "16",
    ]
    assert main([*argv, "--strength", "0"]) == 0
    with Image.open(capsys.readouterr().out.strip()) as out:
        plain = init.resize((80, 96), Image.Resampling.LANCZOS)
        assert (
            out.size == (80, 96) and out.convert("RGB").tobytes() == plain.tobytes()
        )  # strength 0: the upscale
        parameters = out.text["parameters"]
    assert (
        "SD upscale overlap: 16, SD upscale upscaler: Lanczos" in parameters and "Size: 48x48" in parameters
    )
    assert main([*argv, "--strength", "0.6"]) == 0
    with Image.open(capsys.readouterr().out.strip()) as out:
        redrawn = np.asarray(out.convert("RGB")).astype(float)
    assert np.abs(redrawn - np.asarray(plain).astype(float)).mean() > 2  # the checkpoint redrew the tiles
    Image.new("L", (40, 48), 255).save(data_dir / "mask.png")
    assert main([*argv, "--mask", str(data_dir / "mask.png")]) == 2
    assert main([*argv, "--sd-upscale-upscaler", "Lanczso"]) == 2
    err = capsys.readouterr().err
    assert "no mask" in err and "Lanczos" in err
