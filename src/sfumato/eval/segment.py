"""Plain-background segmentation and geometric features of the objects on it.

The shapes world has one flat background colour and flat-coloured objects, so a pixel belongs to an
object when its colour is far from the background's (estimated from the image border). Connected
components of that mask are the objects; each gets a mean colour, a centroid, a bounding box and
scale-free shape features (fill ratio, solidity, circularity, holes, elongation) that separate the
world's shapes without looking at any network. Written by hand (on numpy/scipy) because it is a few
lines of classic image analysis, and the evaluator must stay independent of the model it scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

MIN_AREA_FRACTION = 0.004  # components smaller than this share of the image are noise
BACKGROUND_DISTANCE = 60.0  # RGB distance from the background that marks a pixel as object


@dataclass(frozen=True)
class Blob:
    """One object found on the background."""

    area: int
    centroid: tuple[float, float]  # (x, y) in pixels
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    colour: tuple[float, float, float]
    features: tuple[float, ...]  # fill, solidity, circularity, holes, elongation


def background_colour(pixels: np.ndarray) -> np.ndarray:
    """Median colour of the one-pixel border: robust to objects touching an edge."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.float64)
    return np.median(border, axis=0)


def _features(mask: np.ndarray) -> tuple[float, ...]:
    ys, xs = np.nonzero(mask)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    area = float(mask.sum())
    fill = area / (height * width)
    filled = ndimage.binary_fill_holes(mask)
    holes = float(filled.sum() - area) / max(float(filled.sum()), 1.0)
    # The hull of the pixels' corners, so its area is comparable with a pixel count.
    corners = np.column_stack([xs, ys]).astype(np.float64)
    corners = np.concatenate([corners + offset for offset in ((0, 0), (1, 0), (0, 1), (1, 1))])
    try:
        hull_area = ConvexHull(corners).volume
    except QhullError:  # degenerate (a line of pixels)
        hull_area = area
    solidity = float(filled.sum()) / max(hull_area, 1.0)
    perimeter = float((filled & ~ndimage.binary_erosion(filled)).sum())
    circularity = 4 * np.pi * float(filled.sum()) / max(perimeter**2, 1.0)
    elongation = max(height, width) / max(min(height, width), 1)
    return (fill, solidity, circularity, holes, float(elongation))


def _core_colour(pixels: np.ndarray, component: np.ndarray) -> tuple[float, float, float]:
    """Median colour of the component's inner pixels: anti-aliased edges mix in the background."""
    core = ndimage.binary_erosion(component)
    chosen = core if core.sum() >= 4 else component
    return tuple(float(c) for c in np.median(pixels[chosen], axis=0))


def find_blobs(image: Image.Image) -> tuple[np.ndarray, list[Blob]]:
    """Background colour and the objects on it, largest first."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    background = background_colour(pixels)
    mask = np.linalg.norm(pixels - background, axis=2) > BACKGROUND_DISTANCE
    labels, count = ndimage.label(mask)
    min_area = MIN_AREA_FRACTION * mask.size
    blobs = []
    for index in range(1, count + 1):
        component = labels == index
        area = int(component.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(component)
        blobs.append(
            Blob(
                area=area,
                centroid=(float(xs.mean()), float(ys.mean())),
                bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                colour=_core_colour(pixels, component),
                features=_features(component),
            )
        )
    blobs.sort(key=lambda b: b.area, reverse=True)
    return background, blobs
