"""The shapes world: pixels agree with the ground truth, captions name it all, splits never mix."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sfumato.data.shapes import (
    CELL_MARGIN,
    COLOURS,
    POSITIONS,
    SHAPE_FILL,
    SHAPES,
    SIZES,
    UNDERSPECIFIED_FRACTION,
    ObjectSpec,
    Scene,
    canonical_caption,
    caption,
    colour_probe,
    describe,
    eval_prompts,
    is_held_out,
    object_bbox,
    object_box,
    random_scene,
    render,
    scene_key,
    train_rng,
    write_dataset,
)

# Longest alternatives first so "top left" wins over "top".
_TERMS = sorted([*COLOURS, *SHAPES, *SIZES, *POSITIONS, "background"], key=lambda t: (-len(t), t))
_TOKEN = re.compile(r"\b(" + "|".join(_TERMS) + r")\b")


def _kind(term: str) -> str:
    for kind, vocab in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES), ("cell", POSITIONS)):
        if term in vocab:
            return kind
    return "background"


def _parse(text: str, background: str, named: int = 4) -> tuple[str, list[dict[str, str]]]:
    """Vocabulary words in order: the colour beside "background", then one group of `named` per object."""
    terms = _TOKEN.findall(text)
    at = terms.index("background")
    neighbours = [i for i in (at - 1, at + 1) if 0 <= i < len(terms) and terms[i] == background]
    assert neighbours, text
    rest = [t for i, t in enumerate(terms) if i not in (at, neighbours[0])]
    assert len(rest) % named == 0, text
    groups = [{_kind(t): t for t in rest[i : i + named]} for i in range(0, len(rest), named)]
    return terms[neighbours[0]], groups


def _key(group: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(group.items())


def _lab(rgb: tuple[int, int, int]) -> np.ndarray:
    c = np.array(rgb) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    f = np.cbrt(xyz / np.array([0.95047, 1.0, 1.08883]))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _scenes(count: int, seed: int = 0) -> list[Scene]:
    return [random_scene(train_rng(seed, i)) for i in range(count)]


def _coverage(pixels: np.ndarray, background: str, colour: str) -> np.ndarray:
    """Per pixel, how much of `colour` is mixed into the background (0..1)."""
    bg, fg = np.array(COLOURS[background], float), np.array(COLOURS[colour], float)
    return ((pixels.astype(float) - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))


def test_vocabulary_is_separable() -> None:
    assert len(SHAPES) >= 6 and len(COLOURS) >= 8 and len(SIZES) == 3 and len(POSITIONS) == 9
    for a, b in itertools.combinations(COLOURS.values(), 2):
        assert np.linalg.norm(_lab(a) - _lab(b)) > 40, (a, b)
    for a, b in itertools.combinations(SHAPE_FILL.values(), 2):
        assert abs(a - b) >= 0.08
    small = SIZES["small"] * 64
    assert small >= 10 and SIZES["medium"] / SIZES["small"] > 1.25 and SIZES["large"] / SIZES["medium"] > 1.25


def test_scenes_and_images_are_deterministic() -> None:
    assert _scenes(20, seed=3) == _scenes(20, seed=3) != _scenes(20, seed=4)
    scene = random_scene(7)
    assert render(scene).tobytes() == render(random_scene(random.Random(7))).tobytes()
    assert caption(scene, 5) == caption(scene, random.Random(5))


@pytest.mark.parametrize("size", [32, 64, 96])
def test_pixels_match_ground_truth(size: int) -> None:
    for scene in _scenes(150):
        image = render(scene, size)
        assert image.mode == "RGB" and image.size == (size, size)
        pixels = np.asarray(image).astype(int)
        bg = np.array(COLOURS[scene.background])
        whole_pixel_margin = size * CELL_MARGIN >= 1  # from 50 px up
        for corner in (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]):
            assert not whole_pixel_margin or (corner == bg).all()
        assert len({scene.background, *(o.colour for o in scene.objects)}) == len(scene.objects) + 1
        assert len({o.cell for o in scene.objects}) == len(scene.objects)
        tinted = np.abs(pixels - bg).sum(axis=-1) > 0
        owner = np.zeros(tinted.shape, int)
        for index, obj in enumerate(scene.objects):
            x, y = colour_probe(scene, index, size)
            distances = {name: np.abs(pixels[y, x] - rgb).max() for name, rgb in COLOURS.items()}
            assert min(distances, key=distances.get) == obj.colour, (scene, index)
            assert size < 64 or distances[obj.colour] <= 3, (scene, index)  # solid at 64 px and up
            row, col = divmod(POSITIONS.index(obj.cell), 3)
            x0, y0, x1, y1 = object_box(obj)
            margin = CELL_MARGIN - 1e-9
            assert col / 3 + margin <= x0 and x1 <= (col + 1) / 3 - margin
            assert row / 3 + margin <= y0 and y1 <= (row + 1) / 3 - margin
            left, top, right, bottom = object_bbox(scene, index, size)
            if whole_pixel_margin:  # even anti-aliased edge pixels stay in the cell
                assert col * size / 3 <= left and right <= (col + 1) * size / 3
                assert row * size / 3 <= top and bottom <= (row + 1) * size / 3
            owner[top:bottom, left:right] += 1
        assert owner.max() <= 1  # boxes are disjoint, so objects cannot overlap
        assert not (tinted & (owner == 0)).any()  # every tinted pixel is inside its object's box


@pytest.mark.parametrize("size", [64, 128])
def test_fill_ratio_identifies_the_shape(size: int) -> None:
    rng = random.Random(1)
    for shape, size_name in itertools.product(SHAPES, SIZES):
        jitter = (rng.uniform(-1, 1), rng.uniform(-1, 1))
        scene = Scene("white", (ObjectSpec(shape, "blue", size_name, rng.choice(POSITIONS), jitter),))
        cover = _coverage(np.asarray(render(scene, size)), "white", "blue")
        left, top, right, bottom = object_box(scene.objects[0])
        fill = cover.sum() / ((right - left) * (bottom - top) * size * size)
        assert abs(fill - SHAPE_FILL[shape]) < 0.03, (shape, size_name, fill)
        assert min(SHAPE_FILL, key=lambda s: abs(SHAPE_FILL[s] - fill)) == shape


def test_ring_has_a_hole_and_star_points_up() -> None:
    ring = Scene("black", (ObjectSpec("ring", "white", "small", "center"),))
    pixels = np.asarray(render(ring))
    assert tuple(pixels[32, 32]) == COLOURS["black"]
    star = Scene("black", (ObjectSpec("star", "white", "large", "center"),))
    cover = _coverage(np.asarray(render(star, 128)), "black", "white")
    top = np.nonzero(cover.sum(axis=1) > 0)[0][0]
    assert np.nonzero(cover[top] > 0)[0].mean() == pytest.approx(64, abs=1.5)


def test_every_caption_names_what_it_says_it_names() -> None:
    """Each caption names the background and every object's colour and shape, and its size and cell
    unless `describe` reports them unnamed; `UNDERSPECIFIED_FRACTION` of them (within four binomial
    standard deviations) leave something out, in every combination."""
    rng = random.Random(0)
    wordings, omissions = set(), Counter()
    scenes = _scenes(600)
    for scene in scenes:
        described = describe(scene, rng)
        for text, unnamed in ((described.text, described.unnamed), (canonical_caption(scene), ())):
            background, groups = _parse(text, scene.background, 4 - len(unnamed))
            assert background == scene.background
            expected = [
                {k: v for k, v in asdict(o).items() if k != "jitter" and k not in unnamed}
                for o in scene.objects
            ]
            assert sorted(groups, key=_key) == sorted(expected, key=_key), text
            assert " a o" not in f" {text}" and "  " not in text and ", ," not in text, text
            assert not re.search(r"(^|[,;:] ?)[,;:]|[,;:]$|^ | $", text), text
            wordings.add(re.sub(_TOKEN, "_", text))
        omissions[described.unnamed] += 1
    assert len(wordings) >= 40
    assert set(omissions) == {(), ("size",), ("cell",), ("size", "cell")}
    assert abs(1 - omissions[()] / len(scenes) - UNDERSPECIFIED_FRACTION) < 0.05


def test_underspecified_captions_read_like_prompts() -> None:
    """With size and position left out, the natural wording is the README's own prompt."""
    scene = Scene("white", (ObjectSpec("circle", "red", "small", "top left"),))
    texts = {
        described.text
        for described in (describe(scene, seed) for seed in range(400))
        if described.unnamed == ("size", "cell")
    }
    assert "a red circle on a white background" in texts
    assert "white background, red circle" in texts


def test_canonical_caption_wording() -> None:
    scene = Scene(
        "white",
        (ObjectSpec("star", "green", "large", "left"), ObjectSpec("ring", "orange", "small", "bottom right")),
    )
    assert canonical_caption(scene) == (
        "a large green star on the left and a small orange ring at the bottom right on a white background"
    )
    assert canonical_caption(Scene("orange", scene.objects[:1])) == (
        "a large green star on the left on an orange background"
    )
    assert (
        canonical_caption(scene, ("size", "cell")) == "a green star and an orange ring on a white background"
    )
    assert canonical_caption(scene, ("size",)) == (
        "a green star on the left and an orange ring at the bottom right on a white background"
    )
    short = eval_prompts(3, seed=0, two_objects=False, unnamed=("cell",))
    assert [scene for _, scene in short] == [scene for _, scene in eval_prompts(3, seed=0, two_objects=False)]
    assert all(text == canonical_caption(scene, ("cell",)) for text, scene in short)


def test_whole_vocabulary_occurs_in_2000_scenes() -> None:
    scenes = _scenes(2000)
    seen = {scene.background for scene in scenes} | {
        value for scene in scenes for o in scene.objects for value in (o.shape, o.colour, o.size, o.cell)
    }
    assert seen >= {*COLOURS, *SHAPES, *SIZES, *POSITIONS}
    counts = {len(scene.objects) for scene in scenes}
    assert counts == {1, 2}


def test_kohya_layout_and_metadata(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "a", 12, seed=2, size=48, repeats=5, name="world")
    assert folder == tmp_path / "a" / "5_world"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [f"{i:06d}{ext}" for i in range(12) for ext in (".png", ".txt")] + ["metadata.jsonl"]
    )
    records = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 12
    for record in records:
        scene = Scene.from_dict(record["scene"])
        assert Scene.from_dict(scene.to_dict()) == scene
        image = Image.open(folder / record["file"])
        assert image.mode == "RGB" and image.size == (48, 48)
        assert np.array_equal(np.asarray(image), np.asarray(render(scene, 48)))
        assert (folder / record["file"]).with_suffix(".txt").read_text() == record["caption"]
        assert _parse(record["caption"], scene.background, 4 - len(record["unnamed"]))[0] == scene.background

    def digest(root: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}

    again = write_dataset(tmp_path / "b", 12, seed=2, size=48, repeats=5, name="world")
    assert digest(again) == digest(folder)
    other = write_dataset(
        tmp_path / "c", 12, seed=3, size=48, repeats=5, name="world", caption_ext=".caption"
    )
    assert (other / "000000.caption").exists() and digest(other) != digest(folder)


def test_eval_prompts_are_held_out_from_training() -> None:
    singles = eval_prompts(60, seed=0, two_objects=False)
    pairs = eval_prompts(60, seed=0, two_objects=True)
    assert eval_prompts(60, seed=0, two_objects=True) == pairs != eval_prompts(60, seed=1, two_objects=True)
    assert {len(s.objects) for _, s in singles} == {1} and {len(s.objects) for _, s in pairs} == {2}
    assert len({scene_key(s) for _, s in singles + pairs}) == 120
    assert all(is_held_out(s) and text == canonical_caption(s) for text, s in singles + pairs)

    training = _scenes(3000)
    assert not any(is_held_out(s) for s in training)
    keys = {scene_key(s) for s in training}
    rng = random.Random(0)
    texts = {caption(s, rng) for s in training} | {canonical_caption(s) for s in training}
    for text, scene in singles + pairs:
        assert scene_key(scene) not in keys and text not in texts
