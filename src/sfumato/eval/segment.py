"""Plain-background segmentation and geometric features of the objects on it.

The shapes world has one flat background colour and flat-coloured objects, so a pixel belongs to an
object when its colour is far from the background's (estimated from the image border). Connected
components of that mask are the objects; each gets a colour, a centroid, a bounding box and a
silhouette: how much of each pixel the object covers, resampled to a fixed square over its box, which
`sfumato.eval.shapes` compares with the renderer's own silhouettes. Written by hand (on numpy, scipy
and OpenCV) because it is a few lines of classic image analysis, and the evaluator must stay
independent of the model it scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

MIN_AREA_FRACTION = 0.004  # components smaller than this share of the image are noise
BACKGROUND_DISTANCE = 60.0  # RGB distance from the background that marks a pixel as object
SILHOUETTE_SIZE = 20  # side of the square a silhouette is resampled to (the large objects are ~18 px)


@dataclass(frozen=True)
class Blob:
    """One object found on the background."""

    area: int
    centroid: tuple[float, float]  # (x, y) in pixels
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    colour: tuple[float, float, float]
    silhouette: np.ndarray = field(compare=False, repr=False)  # SILHOUETTE_SIZE² coverage in [0, 1]


def background_colour(pixels: np.ndarray) -> np.ndarray:
    """Median colour of the one-pixel border: robust to objects touching an edge."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.float64)
    return np.median(border, axis=0)


def coverage(pixels: np.ndarray, background: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Per pixel, the share of the object's colour in its mix with the background (0 to 1).

    The renderer mixes each edge pixel linearly by the fraction the shape covers, so projecting a
    pixel on the background-to-object colour line gives that fraction back; a threshold would instead
    move every edge by up to a pixel, a large error on a 10-px object."""
    direction = colour - background
    share = (pixels - background) @ direction / max(float(direction @ direction), 1e-6)
    return np.clip(share, 0.0, 1.0)


def silhouette(cover: np.ndarray, component: np.ndarray) -> np.ndarray:
    """The object's coverage around its component, cropped to the box where it is at least half
    covered (plus a pixel) and resampled to SILHOUETTE_SIZE²: the same square for every size, so
    objects of any size compare with one another. One pixel around the component is included for
    its soft edge; anything further belongs to the background or to another object."""
    own = np.where(ndimage.binary_dilation(component), cover, 0.0).astype(np.float32)
    ys, xs = np.nonzero(own >= 0.5)
    if len(ys) == 0:
        ys, xs = np.nonzero(component)
    crop = np.pad(own[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], 1)
    shrinking = max(crop.shape) > SILHOUETTE_SIZE
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(crop, (SILHOUETTE_SIZE, SILHOUETTE_SIZE), interpolation=interpolation)


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
        colour = _core_colour(pixels, component)
        blobs.append(
            Blob(
                area=area,
                centroid=(float(xs.mean()), float(ys.mean())),
                bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                colour=colour,
                silhouette=silhouette(coverage(pixels, background, np.asarray(colour)), component),
            )
        )
    blobs.sort(key=lambda b: b.area, reverse=True)
    return background, blobs
