"""SD upscale (A1111's img2img script): upscale the picture, then redraw it tile by tile with img2img
at the model's own size, and blend the tiles back together.

The upscaler adds pixels; the checkpoint adds detail a plain upscaler cannot, at a size the checkpoint
could never sample in one go. As in A1111: tiles are the request's width×height, overlapping by
`overlap` pixels and spread evenly so the last one meets the picture's edge; every tile of one image
gets the same seed; each image of `n_iter` counts the seed up by one; the infotext gets "SD upscale
overlap" and "SD upscale upscaler" and its Size is the tile's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sfumato.errors import UserError
from sfumato.imaging.masks import Box
from sfumato.models.loader import LoadedModel
from sfumato.prompts.encode import EmbeddingLookup
from sfumato.request import Img2ImgRequest
from sfumato.tasks.common import Progress, RunControl, resolve_seed
from sfumato.tasks.extras import ResizeTarget, upscale
from sfumato.tasks.img2img import img2img
from sfumato.tasks.img2img_inputs import Img2ImgInputs
from sfumato.tasks.txt2img import GeneratedImage, Txt2ImgResult
from sfumato.upscalers.models import ImageModels


@dataclass(frozen=True)
class SdUpscale:
    """The script's own settings (A1111's defaults)."""

    upscaler: str = "None"
    scale: float = 2.0
    overlap: int = 64


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one side: as few tiles as cover it with at least `overlap` shared, spread
    evenly, the last one ending at the edge."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def tile_boxes(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> list[Box]:
    if not 0 <= overlap < min(tile_w, tile_h):
        raise UserError(
            f"the tile overlap must be from 0 to less than the tile size, not {overlap}", field="overlap"
        )
    return [
        (left, top, min(left + tile_w, width), min(top + tile_h, height))
        for top in _starts(height, tile_h, overlap)
        for left in _starts(width, tile_w, overlap)
    ]


def _ramp(length: int, fade_start: int, fade_end: int) -> np.ndarray:
    """1 across the tile, falling linearly to ~0 over the `fade_*` pixels it shares with a neighbour."""
    weights = np.ones(length, np.float64)
    if fade_start:
        weights[:fade_start] = (np.arange(fade_start) + 0.5) / fade_start
    if fade_end:
        weights[length - fade_end :] = np.minimum(
            weights[length - fade_end :], (np.arange(fade_end)[::-1] + 0.5) / fade_end
        )
    return weights


def blend_tiles(size: tuple[int, int], tiles: list[tuple[Box, Image.Image]]) -> Image.Image:
    """The tiles laid where they belong, cross-faded linearly where they overlap (weights summing to
    one everywhere, so a picture cut into tiles and blended back is unchanged)."""
    width, height = size
    total = np.zeros((height, width, 3), np.float64)
    weight = np.zeros((height, width, 1), np.float64)
    boxes = [box for box, _ in tiles]
    for (left, top, right, bottom), tile in tiles:
        shared = [
            max((b[2] - left for b in boxes if b[0] < left < b[2] and _rows_meet(b, top, bottom)), default=0),
            max(
                (right - b[0] for b in boxes if b[0] < right < b[2] and _rows_meet(b, top, bottom)), default=0
            ),
            max((b[3] - top for b in boxes if b[1] < top < b[3] and _cols_meet(b, left, right)), default=0),
            max(
                (bottom - b[1] for b in boxes if b[1] < bottom < b[3] and _cols_meet(b, left, right)),
                default=0,
            ),
        ]
        w = np.outer(_ramp(bottom - top, shared[2], shared[3]), _ramp(right - left, shared[0], shared[1]))[
            ..., None
        ]
        total[top:bottom, left:right] += np.asarray(tile.convert("RGB"), np.float64) * w
        weight[top:bottom, left:right] += w
    return Image.fromarray(np.clip(np.round(total / weight), 0, 255).astype(np.uint8))


def _rows_meet(box: Box, top: int, bottom: int) -> bool:
    return box[1] < bottom and top < box[3]


def _cols_meet(box: Box, left: int, right: int) -> bool:
    return box[0] < right and left < box[2]


def sd_upscale(
    model: LoadedModel,
    request: Img2ImgRequest,
    image: Image.Image,
    options: SdUpscale,
    control: RunControl | None = None,
    *,
    models: ImageModels | None = None,
    embedding_lookup: Callable[[object], EmbeddingLookup] | None = None,
) -> Txt2ImgResult:
    """`n_iter` upscaled pictures of `image`, each redrawn tile by tile with `request`'s img2img."""
    control = control or RunControl()
    big = upscale(image, ResizeTarget(scale=options.scale), upscaler_1=options.upscaler, models=models)
    tile_w, tile_h = request.width or model.native_size[0], request.height or model.native_size[1]
    boxes = tile_boxes(big.width, big.height, tile_w, tile_h, options.overlap)
    result = Txt2ImgResult(
        images=[],
        params={"SD upscale overlap": options.overlap, "SD upscale upscaler": options.upscaler},
        size=(tile_w, tile_h),
    )
    seed, subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    for iteration in range(request.n_iter):
        tiles: list[tuple[Box, Image.Image]] = []
        tile_request = request.model_copy(
            update={
                "seed": seed + iteration,
                "subseed": subseed + iteration,
                "n_iter": 1,
                "batch_size": 1,
                "width": None,
                "height": None,
            }
        )
        for number, box in enumerate(boxes):
            crop = big.crop(box)
            sub = _tile_control(control, number, len(boxes), iteration)
            done = img2img(  # no width/height: the result has the tile's own size
                model,
                tile_request,
                Img2ImgInputs(crop),
                sub,
                embedding_lookup=embedding_lookup,
            )
            if number == 0:  # img2img's infotext keys (strength, Lora hashes …) are the tiles'
                result.params = {**done.params, **result.params}
                result.used_embeddings.update(done.used_embeddings)
                result.notes.extend(n for n in done.notes if n not in result.notes)
            tiles.append((box, done.images[0].image))
            if sub.interrupted:
                control.interrupted = True
                break
        done_boxes = [box for box, _ in tiles]
        untouched = [(box, big.crop(box)) for box in boxes if box not in done_boxes]  # an interrupted job
        generated = GeneratedImage(
            blend_tiles(big.size, tiles + untouched),
            seed + iteration,
            subseed + iteration,
            iteration,
            control.interrupted,
        )
        result.images.append(generated)
        if control.on_image:
            control.on_image(generated, result)
        if control.interrupted:
            break
    return result


def _tile_control(control: RunControl, number: int, count: int, iteration: int) -> RunControl:
    """The caller's hooks for one tile: progress counted over all tiles, no per-tile saving."""

    def on_step(progress: Progress) -> None:
        if control.on_step:
            total = progress.total * count
            control.on_step(
                Progress(number * progress.total + progress.step, total, iteration, progress.denoised)
            )

    return RunControl(on_step=on_step, should_stop=control.should_stop, should_skip=control.should_skip)
