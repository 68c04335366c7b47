"""`sfumato eval shapes`: does a generated image show what its shapes-world prompt asked for?

The checker never uses the generator it judges. It segments the image on its plain background
(`sfumato.eval.segment`), names each object's colour by the nearest colour of the world's palette,
its position by the 3×3 cell of its centroid, and its shape with a nearest-centroid classifier over
scale-free geometric features, trained on images drawn by the world's own renderer (ground truth).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from sfumato.data.shapes import COLOURS, POSITIONS, Scene, random_scene, render
from sfumato.eval.segment import Blob, find_blobs

TRAINING_SCENES = 600


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
    """Nearest centroid over standardised features; centroids from renderer ground truth."""

    labels: tuple[str, ...]
    centroids: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def __call__(self, blob: Blob) -> str:
        z = (np.asarray(blob.features) - self.mean) / self.scale
        return self.labels[int(np.argmin(np.linalg.norm(self.centroids - z, axis=1)))]


@lru_cache(maxsize=4)
def shape_classifier(size: int = 64) -> ShapeClassifier:
    """Train on `TRAINING_SCENES` rendered one-object scenes at `size` px (deterministic)."""
    features: list[tuple[float, ...]] = []
    labels: list[str] = []
    for index in range(TRAINING_SCENES):
        scene = random_scene(index, max_objects=1, p_two=0.0, split="any")
        _, blobs = find_blobs(render(scene, size))
        if len(blobs) == 1:
            features.append(blobs[0].features)
            labels.append(scene.objects[0].shape)
    x = np.asarray(features)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    names = tuple(sorted(set(labels)))
    z = (x - mean) / scale
    centroids = np.stack([z[[label == name for label in labels]].mean(axis=0) for name in names])
    return ShapeClassifier(names, centroids, mean, scale)


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
