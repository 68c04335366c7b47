"""A synthetic "shapes world": the images and captions sfumato's own tiny text-to-image model learns from.

No pretrained model can be downloaded here, so meaning is tested with a model trained on a world whose
ground truth is exact: one or two flat-coloured shapes on a plain background, each with a colour, a
shape, a size and a cell of a 3×3 grid. Everything is chosen so an independent checker can read those
attributes back from pixels with plain-background segmentation:

* colours are at least ~43 ΔE (CIELAB) apart, an object never has the background's colour and two
  objects never share a colour, so every coloured region is separable;
* shapes have distinct fill ratios within their bounding box (`SHAPE_FILL`), the ring also has a hole;
* every object lies strictly inside its grid cell (a margin of `CELL_MARGIN` of the image side), so
  objects never overlap or touch and "position" is unambiguous; from 50 px up the margin is at
  least a pixel, so even anti-aliased edge pixels stay inside the cell;
* the object's bounding box is centred in its cell, moved by a small jitter (`ObjectSpec.jitter`, a
  fraction of `max_jitter(size)`) that never pushes it past the margin.

Positions are named in row-major order: "top left", "top", "top right", "left", "center", "right",
"bottom left", "bottom", "bottom right" (American "center", as in prompts).

Seeds: training scene `i` of `write_dataset(seed=s)` comes from its own `random.Random` seeded with the
string "sfumato-shapes/train/{s}/{i}", evaluation prompts from "sfumato-shapes/eval/...": the streams
never share a seed, and a scene's content decides whether it is held out (`is_held_out`, about
`HELD_OUT_FRACTION` of all scenes), so no evaluation scene is ever in any training set.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

Split = Literal["train", "eval", "any"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 90, 240),
    "yellow": (245, 215, 30),
    "orange": (245, 135, 20),
    "purple": (130, 30, 140),
    "pink": (250, 140, 210),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
# Side of the object's bounding box (its longer side) as a fraction of the image side. At 64 px:
# about 10, 14 and 18 px, so even a small star shows its points; size ratios ≥ 1.27 stay readable.
SIZES: dict[str, float] = {"small": 0.16, "medium": 0.22, "large": 0.28}
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
CELL_MARGIN = 0.02  # fraction of the image side kept free between an object and its cell's edges
JITTER = 0.04  # largest centre offset, as a fraction of the image side, when the cell leaves room
SUPERSAMPLE = 4  # samples per pixel side; box-averaged, so edges are anti-aliased without ringing
HELD_OUT_FRACTION = 0.1

# Shape geometry knobs, chosen so the fill ratios (`SHAPE_FILL`) stay ≥ 0.08 apart.
RING_INNER = 0.5  # inner radius / outer radius
CROSS_ARM = 0.45  # arm width / cross width
STAR_INNER = 0.42  # inner radius / outer radius of the five-pointed star

Points = list[tuple[float, float]]


def _edges(points: Points) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    return list(zip(points, points[1:] + points[:1], strict=True))


def _extent(points: Points) -> tuple[float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return max(xs) - min(xs), max(ys) - min(ys)


def _star_points() -> Points:
    """Five-pointed star pointing up, scaled so its longer side is 1, bounding box centred on 0."""
    points = [
        (r * math.cos(a), r * math.sin(a))
        for k in range(10)
        for r, a in [(1.0 if k % 2 == 0 else STAR_INNER, -math.pi / 2 + k * math.pi / 5)]
    ]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy, scale = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2, 1 / max(_extent(points))
    return [((x - cx) * scale, (y - cy) * scale) for x, y in points]


_STAR = _star_points()
_TRIANGLE = [(0.0, -0.5), (0.5, 0.5), (-0.5, 0.5)]
# Width and height of each shape's bounding box relative to its size (the star is a little flat).
SHAPE_EXTENT: dict[str, tuple[float, float]] = {shape: (1.0, 1.0) for shape in SHAPES} | {
    "star": _extent(_STAR)
}
# Area of the shape over the area of its bounding box: what the checker can classify shapes by.
SHAPE_FILL: dict[str, float] = {
    "circle": math.pi / 4,
    "square": 1.0,
    "triangle": 0.5,
    "star": abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in _edges(_STAR)))
    / 2
    / math.prod(_extent(_STAR)),
    "ring": math.pi / 4 * (1 - RING_INNER**2),
    "cross": 2 * CROSS_ARM - CROSS_ARM**2,
}


@dataclass(frozen=True)
class ObjectSpec:
    """One object's ground truth; `jitter` is its centre offset in units of `max_jitter(size)`."""

    shape: str
    colour: str
    size: str
    cell: str
    jitter: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image: a plain background colour and one or two objects."""

    background: str
    objects: tuple[ObjectSpec, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """JSON-ready form, as stored in `metadata.jsonl`."""
        return {
            "background": self.background,
            "objects": [
                {
                    "shape": o.shape,
                    "colour": o.colour,
                    "size": o.size,
                    "cell": o.cell,
                    "jitter": list(o.jitter),
                }
                for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Inverse of `to_dict`, for evaluators reading `metadata.jsonl`."""
        objects = tuple(
            ObjectSpec(o["shape"], o["colour"], o["size"], o["cell"], tuple(o.get("jitter", (0.0, 0.0))))
            for o in data["objects"]
        )
        return cls(data["background"], objects)


def _rng(rng: random.Random | int) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def scene_key(scene: Scene) -> str:
    """What the scene shows, ignoring jitter and object order: equal keys mean equal captions."""
    objects = sorted(f"{o.size} {o.colour} {o.shape} @ {o.cell}" for o in scene.objects)
    return f"{scene.background} | " + " + ".join(objects)


def is_held_out(scene: Scene) -> bool:
    """Whether the scene belongs to the evaluation split (a fixed hash of its content)."""
    digest = hashlib.sha256(scene_key(scene).encode()).digest()
    return int.from_bytes(digest[:8], "big") < HELD_OUT_FRACTION * 2**64


def _draw_scene(rng: random.Random, count: int, jitter: bool) -> Scene:
    background = rng.choice(list(COLOURS))
    colours = rng.sample([c for c in COLOURS if c != background], count)
    cells = rng.sample(POSITIONS, count)
    objects = tuple(
        ObjectSpec(
            rng.choice(SHAPES),
            colour,
            rng.choice(list(SIZES)),
            cell,
            (round(rng.uniform(-1, 1), 3), round(rng.uniform(-1, 1), 3)) if jitter else (0.0, 0.0),
        )
        for colour, cell in zip(colours, cells, strict=True)
    )
    return Scene(background, objects)


def random_scene(
    rng: random.Random | int, *, max_objects: int = 2, p_two: float = 0.5, split: Split = "train"
) -> Scene:
    """A random scene from `split` ("train" never yields a held-out scene, "eval" only those)."""
    if max_objects not in (1, 2):
        raise ValueError(f"max_objects must be 1 or 2, not {max_objects}")
    rng = _rng(rng)
    count = 2 if max_objects == 2 and rng.random() < p_two else 1
    while True:
        scene = _draw_scene(rng, count, jitter=split != "eval")
        if split == "any" or is_held_out(scene) == (split == "eval"):
            return scene


def max_jitter(size: str) -> float:
    """Largest centre offset (fraction of the image side) that keeps a `size` object inside its cell."""
    return max(0.0, min(JITTER, (1 / 3 - SIZES[size]) / 2 - CELL_MARGIN))


def object_box(obj: ObjectSpec) -> tuple[float, float, float, float]:
    """The object's exact bounding box as fractions of the image side: (left, top, right, bottom)."""
    row, col = divmod(POSITIONS.index(obj.cell), 3)
    reach = max_jitter(obj.size)
    cx = (col + 0.5) / 3 + obj.jitter[0] * reach
    cy = (row + 0.5) / 3 + obj.jitter[1] * reach
    w, h = (SIZES[obj.size] * e for e in SHAPE_EXTENT[obj.shape])
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def object_bbox(scene: Scene, index: int, size: int = 64) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom; right/bottom exclusive) holding every pixel the object tints."""
    left, top, right, bottom = object_box(scene.objects[index])
    return math.floor(left * size), math.floor(top * size), math.ceil(right * size), math.ceil(bottom * size)


def colour_probe(scene: Scene, index: int, size: int = 64) -> tuple[int, int]:
    """A pixel well inside the object's solid colour: its centre, or the middle of a ring's band."""
    obj = scene.objects[index]
    left, top, right, bottom = object_box(obj)
    x, y = (left + right) / 2, (top + bottom) / 2
    if obj.shape == "ring":
        x += (right - left) / 2 * (1 + RING_INNER) / 2
    return round(x * size - 0.5), round(y * size - 0.5)  # the pixel whose centre is nearest


def _inside_polygon(points: Points, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over sample points."""
    inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    for (x0, y0), (x1, y1) in _edges(points):
        if y0 != y1:
            crosses = (y0 > y) != (y1 > y)
            inside ^= crosses & (x < x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    return inside


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (in the shape's unit box, centred on 0) the shape covers."""
    r2 = x * x + y * y
    if shape == "circle":
        return r2 <= 0.25
    if shape == "ring":
        return (r2 <= 0.25) & (r2 > 0.25 * RING_INNER**2)
    if shape == "square":
        return (np.abs(x) <= 0.5) & (np.abs(y) <= 0.5)
    if shape == "cross":
        arm_x, arm_y = np.abs(x) <= CROSS_ARM / 2, np.abs(y) <= CROSS_ARM / 2
        return (arm_x & (np.abs(y) <= 0.5)) | (arm_y & (np.abs(x) <= 0.5))
    if shape == "triangle":
        return _inside_polygon(_TRIANGLE, x, y)
    if shape == "star":
        return _inside_polygon(_STAR, x, y)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw the scene as an RGB image `size` px square, anti-aliased by 4×4 supersampling.

    Sub-pixels are point-sampled at their centres and each pixel mixes object and background colour
    by the fraction covered (a box filter): a pixel is tinted only if the shape reaches into it, so
    nothing leaks past `object_bbox` and there is no ringing. Objects never share a pixel, so each is
    blended against the background alone, within its own box only (fast).
    """
    background = np.array(COLOURS[scene.background], dtype=np.int32)
    pixels = np.empty((size, size, 3), dtype=np.int32)
    pixels[:] = background
    n, area = SUPERSAMPLE, SUPERSAMPLE * SUPERSAMPLE
    for index, obj in enumerate(scene.objects):
        left, top, right, bottom = object_bbox(scene, index, size)
        box = object_box(obj)
        scale = SIZES[obj.size] * size
        x = (np.arange(left * n, right * n) + 0.5) / n - (box[0] + box[2]) / 2 * size
        y = (np.arange(top * n, bottom * n) + 0.5) / n - (box[1] + box[3]) / 2 * size
        mask = _inside(obj.shape, x[None, :] / scale, y[:, None] / scale)
        cover = mask.reshape(bottom - top, n, right - left, n).sum(axis=(1, 3))[..., None]
        colour = np.array(COLOURS[obj.colour], dtype=np.int32)
        pixels[top:bottom, left:right] = (background * (area - cover) + colour * cover + area // 2) // area
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _where(cell: str, style: str) -> str:
    """A position phrase: "at the top left", "in the top left corner", "on the left", ... or bare."""
    if style == "bare":
        return cell
    if cell == "center":
        return "in the center" if style == "at" else "at the center"
    if cell in ("left", "right"):
        return f"on the {cell}" if style == "at" else f"on the {cell} side"
    if " " in cell and style == "in":
        return f"in the {cell} corner"
    return f"at the {cell}"


# Object phrases; "natural" ones read as noun phrases and fit every frame, terse ones only terse frames.
_NATURAL_OBJECTS = (
    "a {size} {colour} {shape} {at}",
    "a {size} {colour} {shape} {in}",
    "{size} {colour} {shape} {at}",
)
_TERSE_OBJECTS = (
    "{colour} {shape}, {size}, {bare}",
    "{size} {colour} {shape}, {bare}",
    "{bare}: {size} {colour} {shape}",
)
_NATURAL_FRAMES = (
    "{objects} on a {background} background",
    "{objects} against a {background} background",
    "a {background} background with {objects}",
    "on a {background} background, {objects}",
    "{objects}, {background} background",
)
_TERSE_FRAMES = (
    "{background} background, {objects}",
    "{objects}; {background} background",
    "background {background}; {objects}",
)


# Prompts as people write them often leave the size or the position out ("a red circle on a white
# background"). Captions that never did taught the first models to swap the object's and the
# background's colours on such prompts; this share of captions leaves out the size, the position or
# both (of every object), so the model learns to choose them itself. A fifth (v7) fixed short prompts
# (background and colour 0.12 -> 1.00) but cost full prompts (shape 0.61 -> 0.55, two objects 0.31 ->
# 0.19): a tenth trades back towards full prompts.
UNDERSPECIFIED_FRACTION = 0.1
UNNAMED_CHOICES: tuple[tuple[str, ...], ...] = (("size",), ("cell",), ("size", "cell"))


class Caption(NamedTuple):
    text: str
    unnamed: tuple[str, ...]  # the attributes ("size", "cell") the text leaves out, for every object


def _tidy(phrase: str) -> str:
    """Drop the gaps an omitted attribute leaves: doubled spaces, empty comma slots, a bare ": "."""
    parts = (" ".join(part.split()) for part in phrase.split(","))
    return ", ".join(part for part in parts if part).removeprefix(": ")


def _object_phrase(template: str, obj: ObjectSpec, unnamed: tuple[str, ...] = ()) -> str:
    def where(style: str) -> str:
        return "" if "cell" in unnamed else _where(obj.cell, style)

    return _tidy(
        template.format(
            size="" if "size" in unnamed else obj.size,
            colour=obj.colour,
            shape=obj.shape,
            at=where("at"),
            bare=where("bare"),
            **{"in": where("in")},
        )
    )


def _articles(text: str) -> str:
    """ "a orange" -> "an orange": text encoders learn real English better than template slips."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def describe(scene: Scene, rng: random.Random | int) -> Caption:
    """A caption in one of several wordings. It always names the background and every object's colour
    and shape; `UNDERSPECIFIED_FRACTION` of captions leave out sizes, positions or both."""
    rng = _rng(rng)
    unnamed = rng.choice(UNNAMED_CHOICES) if rng.random() < UNDERSPECIFIED_FRACTION else ()
    if rng.random() < 0.6:
        template, frame = rng.choice(_NATURAL_OBJECTS), rng.choice(_NATURAL_FRAMES)
        joiner = rng.choice((" and ", ", "))
    else:
        template, frame = rng.choice(_TERSE_OBJECTS), rng.choice(_TERSE_FRAMES)
        joiner = rng.choice((" and ", "; "))
    objects = joiner.join(_object_phrase(template, obj, unnamed) for obj in scene.objects)
    return Caption(_articles(frame.format(objects=objects, background=scene.background)), unnamed)


def caption(scene: Scene, rng: random.Random | int) -> str:
    """`describe`'s text."""
    return describe(scene, rng).text


def canonical_caption(scene: Scene, unnamed: Sequence[str] = ()) -> str:
    """The one fixed wording the evaluator prompts with (also one of `caption`'s wordings), leaving out
    the `unnamed` attributes ("size", "cell") as `describe` does."""
    objects = " and ".join(_object_phrase(_NATURAL_OBJECTS[0], obj, tuple(unnamed)) for obj in scene.objects)
    return _articles(_NATURAL_FRAMES[0].format(objects=objects, background=scene.background))


def train_rng(seed: int, index: int) -> random.Random:
    """The random stream of training image `index`: independent of the dataset's size."""
    return random.Random(f"sfumato-shapes/train/{seed}/{index}")


def write_dataset(
    folder: str | Path,
    count: int,
    *,
    seed: int = 0,
    size: int = 64,
    repeats: int = 1,
    name: str = "shapes",
    caption_ext: str = ".txt",
) -> Path:
    """Write `count` images with captions in kohya's `{repeats}_{name}` folder; returns that folder.

    `metadata.jsonl` in the same folder has one line per image: file, caption, ground-truth scene and
    the attributes the caption leaves unnamed.
    Image `i` depends only on (`seed`, `i`), so files are byte-identical across runs and dataset sizes.
    """
    target = Path(folder) / f"{repeats}_{name}"
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        rng = train_rng(seed, i)
        scene = random_scene(rng)
        text, unnamed = describe(scene, rng)
        stem = f"{i:06d}"
        render(scene, size).save(target / f"{stem}.png", optimize=False, compress_level=6)
        (target / f"{stem}{caption_ext}").write_text(text, encoding="utf-8")
        record = {"file": f"{stem}.png", "caption": text, "scene": scene.to_dict(), "unnamed": list(unnamed)}
        lines.append(json.dumps(record))
    (target / "metadata.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return target


def eval_prompts(
    count: int, *, seed: int, two_objects: bool, unnamed: Sequence[str] = ()
) -> list[tuple[str, Scene]]:
    """`count` distinct held-out scenes with their canonical captions (never seen in training); with
    `unnamed`, the same scenes' captions without those attributes."""
    results: list[tuple[str, Scene]] = []
    if count <= 0:
        return results
    seen: set[str] = set()
    for i in range(50 * count + 1000):
        rng = random.Random(f"sfumato-shapes/eval/{seed}/{int(two_objects)}/{i}")
        scene = random_scene(rng, max_objects=2, p_two=1.0 if two_objects else 0.0, split="eval")
        if scene_key(scene) not in seen:
            seen.add(scene_key(scene))
            results.append((canonical_caption(scene, unnamed), scene))
            if len(results) == count:
                return results
    raise ValueError(f"only {len(results)} distinct held-out scenes found, {count} asked for")


# What `scene_labels` names, in its column order: the background, the object count, then for each of the
# two object slots (in caption order) its shape, colour, size and cell, with a last class for "no object".
_SLOT_ATTRIBUTES = ("shape", "colour", "size", "cell")
LABEL_NAMES: tuple[str, ...] = (
    "background",
    "count",
    *(f"{slot}.{attribute}" for slot in (1, 2) for attribute in _SLOT_ATTRIBUTES),
)
UNNAMED_LABEL = -100  # `training.text_pretrain.IGNORED_LABEL`, torch's default ignore_index
LABEL_CLASSES: tuple[int, ...] = (len(COLOURS), 2) + (
    len(SHAPES) + 1,
    len(COLOURS) + 1,
    len(SIZES) + 1,
    len(POSITIONS) + 1,
) * 2


def scene_labels(scene: Scene, unnamed: Sequence[str] = ()) -> list[int]:
    """The scene's ground truth as class indices (`LABEL_NAMES` columns), for text-encoder pretraining.

    An attribute in `unnamed` is one the caption does not name: its columns hold `UNNAMED_LABEL`, which
    the cross-entropy ignores (the text cannot tell it)."""
    labels = [list(COLOURS).index(scene.background), len(scene.objects) - 1]
    for slot in range(2):
        if slot < len(scene.objects):
            obj = scene.objects[slot]
            labels += [
                SHAPES.index(obj.shape),
                list(COLOURS).index(obj.colour),
                UNNAMED_LABEL if "size" in unnamed else list(SIZES).index(obj.size),
                UNNAMED_LABEL if "cell" in unnamed else POSITIONS.index(obj.cell),
            ]
        else:
            labels += [len(SHAPES), len(COLOURS), len(SIZES), len(POSITIONS)]
    return labels


def dataset_labels(images: Sequence[Path]) -> list[list[int]]:
    """`scene_labels` of images written by `write_dataset`, read from the `metadata.jsonl` beside them."""
    by_path: dict[Path, list[int]] = {}
    for folder in {Path(image).parent for image in images}:
        for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            scene = Scene.from_dict(record["scene"])
            by_path[folder / record["file"]] = scene_labels(scene, record.get("unnamed", ()))
    return [by_path[Path(image)] for image in images]
