"""The embedded default model: it ships in the package, loads through the same path as any checkpoint,
is the default when nothing else is configured, and draws what a shapes-world prompt asks for.

The prompts are held-out scenes (never in its training set) and seeds are fixed, so each run computes
the same images on a given CPU; the thresholds sit below what was measured (noted at each one) so a
different CPU's rounding cannot flip the verdict, yet far above chance (colour 1/10, shape 1/6).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from sfumato.cli import main
from sfumato.data.shapes import ObjectSpec, Scene, eval_prompts
from sfumato.eval.shapes import check_image
from sfumato.models.loader import load_checkpoint
from sfumato.models.recommended import recommended_fields
from sfumato.models.registry import ModelManager, embedded_default_model
from sfumato.request import build_request
from sfumato.settings import load_settings
from sfumato.tasks.txt2img import generate

PROMPTS = 12
# Size and position are not in the prompt: only the background, the count and the shape are asserted.
RED_CIRCLE_ON_WHITE = Scene("white", (ObjectSpec("circle", "red", "medium", "center"),))


@pytest.fixture(scope="module")
def embedded():
    path = embedded_default_model()
    assert path is not None, (
        "the package must ship src/sfumato/models/data/default/sfumato-shapes.safetensors"
    )
    return path


@pytest.fixture(scope="module")
def loaded(embedded):
    return load_checkpoint(embedded, device=torch.device("cpu"), dtype=torch.float32)


def test_ships_small_and_loads_as_an_sd1_checkpoint(embedded, loaded):
    assert embedded.stat().st_size <= 30 * 2**20
    assert (loaded.family, loaded.variant, loaded.prediction) == ("sd1", "base", "epsilon")
    assert loaded.native_size == (64, 64)
    with safe_open(str(embedded), "pt") as handle:
        metadata, keys = handle.metadata(), list(handle.keys())
    # the LDM layout of any SD1 checkpoint, nothing else
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
    assert all(key.startswith(prefixes) for key in keys)
    # CFG 2, what the training script's sweep found best (its `RECOMMENDED`); users who set none get it
    assert recommended_fields(embedded) == {"cfg_scale": 2.0}
    recipe = json.loads(metadata["sfumato.recipe"])
    # the training budget (90 minutes), as the training script measured it
    assert recipe["vae_minutes"] + recipe.get("text_minutes", 0) + recipe["unet_minutes"] <= 90, recipe


def test_is_the_default_when_no_checkpoint_is_configured(tmp_path, embedded):
    manager = ModelManager(
        load_settings({"data_dir": tmp_path}, env={}), device=torch.device("cpu"), dtype=torch.float32
    )
    assert manager.default_checkpoint() == embedded


def _scores(loaded, prompts: list[tuple[str, Scene]]) -> tuple[dict[str, int], list]:
    """How many of `prompts` (seeds 1000 + i) got each attribute right, and the verdicts to show, at
    the settings a user gets: the model's recommended CFG scale, A1111's defaults for the rest."""
    recommended = recommended_fields(loaded.path)
    verdicts = []
    for index, (text, scene) in enumerate(prompts):
        request = build_request(**recommended, prompt=text, seed=1000 + index)
        verdicts.append(check_image(generate(loaded, request).images[0].image, scene))
    scores = {
        "all": sum(v.all_ok for v in verdicts),
        "background": sum(v.background_ok for v in verdicts),
        "count": sum(v.count_ok for v in verdicts),
        **{
            k: sum(getattr(v.objects[0], f"{k}_ok") for v in verdicts)
            for k in ("colour", "position", "shape")
        },
    }
    return scores, [(text, v) for (text, _), v in zip(prompts, verdicts, strict=True)]


def test_held_out_prompts_get_their_background_object_colour_and_position(loaded):
    """Measured on 12 held-out prompts (seeds 1000-1011): background 12, one object 12, object colour
    12, position 12, shape 12, at CFG 2 as at CFG 7 (shape 9 by the scalar-feature checker before
    silhouettes). Chance is 1.2 for
    a colour, 2 for a shape and 1.3 for a position; each threshold leaves one or two verdicts of margin."""
    scores, report = _scores(loaded, eval_prompts(PROMPTS, seed=7, two_objects=False))
    assert scores["background"] >= 11 and scores["count"] >= 10, report
    assert scores["colour"] >= 10 and scores["position"] >= 10 and scores["shape"] >= 10, report


def test_two_object_prompts_get_both_objects_right(loaded):
    """12 held-out two-object prompts: the count and both objects' colour, shape and position right in
    11 of them at the recommended CFG 2 (`sfumato eval shapes`, 100 prompts: 0.83 and 0.78 at seeds 0
    and 1); at A1111's CFG 7 the model gets 8 of these 12 (0.61 and 0.55)."""
    scores, report = _scores(loaded, eval_prompts(PROMPTS, seed=7, two_objects=True))
    assert scores["all"] >= 9, report


def test_short_prompts_get_their_background_and_object_colour(loaded):
    """Prompts as people write them, with no size and no position ("a red star on a cyan background"),
    on the same 12 held-out scenes. Measured at CFG 2: background 12, object colour 10, shape 11, one
    object 9 (with no position named it draws the object twice in 3 of these 12; on the checker's 50
    short prompts, one object 0.90 and 0.84; at CFG 7 here 12, 10, 12 and 7). The model before
    captions left attributes out got background and colour right for 1 in 8."""
    prompts = eval_prompts(PROMPTS, seed=7, two_objects=False, unnamed=("size", "cell"))
    assert all(size not in text for text, _ in prompts for size in ("small", "medium", "large"))
    scores, report = _scores(loaded, prompts)
    assert scores["background"] >= 11 and scores["count"] >= 6, report
    assert scores["colour"] >= 9 and scores["shape"] >= 10, report


def test_readme_first_command_draws_a_red_object_on_white(tmp_path, capsys):
    """`make run` is `sfumato txt2img "a red circle on a white background"` on an empty data dir."""
    argv = [
        "txt2img",
        "a red circle on a white background",
        "--seed",
        "1",
        "--data-dir",
        str(tmp_path),
    ]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    with Image.open(out.strip()) as image:
        assert image.size == (64, 64)
        rgb = image.convert("RGB")
    verdict = check_image(rgb, RED_CIRCLE_ON_WHITE)
    assert verdict.background_ok and verdict.count_ok, verdict
    assert verdict.objects[0].shape == "circle", verdict  # measured: a circle for seeds 1-8 (CFG 2 and 7)
    # The object is red to orange: red well above green and blue in its core (the checker's nearest
    # palette colour can say orange or pink because the edges blend into the white background).
    pixels = np.asarray(rgb, dtype=np.int32).reshape(-1, 3)
    core = pixels[(pixels.max(axis=1) - pixels.min(axis=1)) > 120]
    assert len(core) >= 20, len(core)
    red, green, blue = core.mean(axis=0)
    assert red > green + 80 and red > blue + 80, (red, green, blue)


def test_inpainting_a_red_square_as_a_blue_circle_paints_blue_there_and_nowhere_else(loaded):
    """The square's box is repainted as a blue circle: blue inside, the square's corners back to the
    white background, every pixel outside the mask's reach untouched. (A circle, the model's surest
    shape, so the test measures inpainting, not the model's weaker shapes: squares asked for in
    inpainting came out as crosses for 5 of these 6 seeds.)"""
    from sfumato.data.shapes import canonical_caption, object_bbox, render
    from sfumato.request import build_img2img_request
    from sfumato.tasks.img2img import img2img
    from sfumato.tasks.img2img_inputs import Img2ImgInputs

    scene = Scene("white", (ObjectSpec("square", "red", "large", "center"),))
    target = Scene("white", (ObjectSpec("circle", "blue", "large", "center"),))
    picture = render(scene)
    left, top, right, bottom = object_bbox(scene, 0)
    mask = Image.new("L", picture.size, 0)
    mask.paste(255, (left - 4, top - 4, right + 4, bottom + 4))
    original = np.asarray(picture).astype(int)
    circles = 0
    for seed in range(6):
        request = build_img2img_request(
            prompt=canonical_caption(target), steps=20, seed=seed, denoising_strength=1.0,
            inpainting_fill=1, inpaint_full_res=False, mask_blur=2,
        )  # fmt: skip
        image = img2img(loaded, request, Img2ImgInputs(picture, mask)).images[0].image
        out = np.asarray(image).astype(int)
        inside = out[top:bottom, left:right].reshape(-1, 3)
        painted = inside[inside.min(1) < 200]
        # measured: 86 % of the box painted, mean RGB about (44, 103, 240) for seeds 0-5; the square
        # was (220, 30, 30) over all of it
        assert len(painted) > 0.5 * len(inside)
        red, _, blue = painted.mean(0)
        assert red < 100 and blue - red > 150, painted.mean(0)
        corners = out[[top, top, bottom - 1, bottom - 1], [left, right - 1, left, right - 1]]
        assert corners.min() > 200, corners  # the square's corners are white background again
        grown = np.zeros(out.shape[:2], dtype=bool)  # the mask box plus the blur's reach (5 px)
        grown[top - 4 - 6 : bottom + 4 + 6, left - 4 - 6 : right + 4 + 6] = True
        np.testing.assert_array_equal(out[~grown], original[~grown])
        circles += check_image(image, target).objects[0].shape_ok
    # measured: 6 of 6
    assert circles >= 4
