"""`sfumato eval shapes`: does a generated image show what its shapes-world prompt asked for?

The checker never uses the generator it judges. It segments the image on its plain background
(`sfumato.eval.segment`), names each object's colour by the nearest colour of the world's palette,
its position by the 3×3 cell of its centroid, and its shape by the nearest silhouettes among those of
images drawn by the world's own renderer (ground truth).

Silhouettes replaced (2026-12-05) a nearest-centroid classifier over five scalar features (fill,
solidity, circularity, holes, elongation). On 96 of the shipped model's generations that a person
labelled without seeing the prompts (`tests/data/shapes-hand-labels`), the features agreed with the
person on 72 of the 89 clear images: crosses with rounded arms read as triangles, squares with soft
corners as crosses, thick rings as circles. Silhouettes agree on 88 of 89 (86 of 88 on a second set
labelled afterwards) and read the renderer's own images without a miss (the features: 0.98).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
from PIL import Image

from sfumato.data.shapes import COLOURS, POSITIONS, Scene, random_scene, render
from sfumato.eval.segment import Blob, find_blobs

TRAINING_SCENES = 600
NEIGHBOURS = 3
# Generated objects have softer edges than the renderer's box filter: each training scene is also
# drawn blurred by a Gaussian of a std drawn from this range (px), so that softness is not read as
# shape. At 1.2 px a small star's points are about gone, so larger blurs would teach noise.
TRAINING_BLUR_PX = (0.3, 1.2)


@dataclass(frozen=True)
class ObjectVerdict:
    """What the checker read for one expected object, and whether each attribute is right."""

    colour: str | None
    shape: str | None
    position: str | None
    colour_ok: bool
    shape_ok: bool
    position_ok: bool

    @property
    def all_ok(self) -> bool:
        return self.colour_ok and self.shape_ok and self.position_ok


@dataclass(frozen=True)
class ImageVerdict:
    objects: tuple[ObjectVerdict, ...]
    count_ok: bool
    background_ok: bool

    @property
    def all_ok(self) -> bool:
        return self.count_ok and all(o.all_ok for o in self.objects)


def nearest_colour(rgb: Sequence[float]) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(np.linalg.norm(palette - np.asarray(rgb), axis=1)))]


def cell_of(centroid: tuple[float, float], size: tuple[int, int]) -> str:
    column = min(2, int(3 * centroid[0] / size[0]))
    row = min(2, int(3 * centroid[1] / size[1]))
    return POSITIONS[3 * row + column]


@dataclass(frozen=True)
class ShapeClassifier:
    """The shape whose NEIGHBOURS closest training silhouettes are nearest on average (L2 distance).

    Examples, not one mean silhouette per shape: a small star and a large one resample to different
    squares (the small one has soft points), so a shape is a spread of silhouettes. A mean per shape
    rather than a vote among the nearest few: in a vote, a shape with many near-misses outvotes a
    closer one (a lumpy circle read as a cross, 3 of the 5 nearest)."""

    labels: tuple[str, ...]
    silhouettes: np.ndarray  # (n, SILHOUETTE_SIZE²)
    label_of: np.ndarray  # (n,) index into labels

    def __call__(self, blob: Blob) -> str:
        distance = np.linalg.norm(self.silhouettes - blob.silhouette.ravel(), axis=1)
        closest = [
            np.sort(distance[self.label_of == index])[:NEIGHBOURS].mean() for index in range(len(self.labels))
        ]
        return self.labels[int(np.argmin(closest))]


@lru_cache(maxsize=4)
def shape_classifier(size: int = 64) -> ShapeClassifier:
    """Silhouettes of `TRAINING_SCENES` rendered one-object scenes at `size` px, each drawn sharp and
    blurred (deterministic)."""
    blur = np.random.default_rng(0).uniform(*TRAINING_BLUR_PX, size=TRAINING_SCENES)
    silhouettes: list[np.ndarray] = []
    shapes: list[str] = []
    for index in range(TRAINING_SCENES):
        scene = random_scene(index, max_objects=1, p_two=0.0, split="any")
        sharp = np.asarray(render(scene, size))
        for pixels in (sharp, cv2.GaussianBlur(sharp, (0, 0), float(blur[index]))):
            _, blobs = find_blobs(Image.fromarray(pixels))
            if len(blobs) == 1:
                silhouettes.append(blobs[0].silhouette.ravel())
                shapes.append(scene.objects[0].shape)
    labels = tuple(sorted(set(shapes)))
    label_of = np.array([labels.index(shape) for shape in shapes])
    return ShapeClassifier(labels, np.stack(silhouettes), label_of)


def _verdict(expected, blob: Blob | None, classify: ShapeClassifier, size: tuple[int, int]) -> ObjectVerdict:
    if blob is None:
        return ObjectVerdict(None, None, None, False, False, False)
    colour, shape, position = nearest_colour(blob.colour), classify(blob), cell_of(blob.centroid, size)
    return ObjectVerdict(
        colour, shape, position, colour == expected.colour, shape == expected.shape, position == expected.cell
    )


def check_image(image: Image.Image, scene: Scene) -> ImageVerdict:
    """Read the image back and compare with the scene its prompt described."""
    background, blobs = find_blobs(image)
    classify = shape_classifier(image.width)
    expected = scene.objects
    found: list[Blob | None] = list(blobs[: len(expected)]) + [None] * max(0, len(expected) - len(blobs))
    best: tuple[ObjectVerdict, ...] = ()
    for order in itertools.permutations(found, len(expected)):  # pair objects with blobs, best match
        verdicts = tuple(
            _verdict(obj, blob, classify, image.size) for obj, blob in zip(expected, order, strict=True)
        )
        score = sum(v.colour_ok + v.shape_ok + v.position_ok for v in verdicts)
        if not best or score > sum(v.colour_ok + v.shape_ok + v.position_ok for v in best):
            best = verdicts
    return ImageVerdict(
        objects=best,
        count_ok=len(blobs) == len(expected),
        background_ok=nearest_colour(background) == scene.background,
    )


def summarise(verdicts: Sequence[tuple[Scene, ImageVerdict]]) -> dict[str, Any]:
    """Per-attribute accuracy over objects, and the share of two-object prompts entirely right;
    `shape_by_shape` and `shape_by_size` break shape accuracy down by what was asked for."""
    pairs = [(spec, o) for scene, v in verdicts for spec, o in zip(scene.objects, v.objects, strict=True)]
    objects = [o for _, o in pairs]
    two = [v for scene, v in verdicts if len(scene.objects) == 2]

    def share(values: list[bool]) -> float:
        return round(sum(values) / len(values), 4) if values else float("nan")

    def shape_by(attribute: str) -> dict[str, float]:
        values = sorted({getattr(spec, attribute) for spec, _ in pairs})
        return {
            value: share([o.shape_ok for spec, o in pairs if getattr(spec, attribute) == value])
            for value in values
        }

    return {
        "images": len(verdicts),
        "colour": share([o.colour_ok for o in objects]),
        "shape": share([o.shape_ok for o in objects]),
        "position": share([o.position_ok for o in objects]),
        "count": share([v.count_ok for _, v in verdicts]),
        "background": share([v.background_ok for _, v in verdicts]),
        "two_object_both_right": share([v.all_ok for v in two]),
        "shape_by_shape": shape_by("shape"),
        "shape_by_size": shape_by("size"),
    }


def evaluate(generate: Callable[[str], Image.Image], prompts: Sequence[tuple[str, Scene]]) -> dict[str, Any]:
    """Generate each prompt's image and score it."""
    return summarise([(scene, check_image(generate(text), scene)) for text, scene in prompts])
