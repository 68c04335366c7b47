"""Running an image model over a large picture in tiles, so memory stays bounded by the tile size.

Each tile is run with a margin of `overlap` pixels of real picture around it, and only the tile's own
part of the result is kept. A convolutional model whose receptive field fits in the margin therefore
gives exactly the untiled result, seams included; a model that sees farther differs only slightly,
near the seams. (A1111 blends overlapping tiles instead, which alters pixels even where no tile edge
was near.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from tqdm import tqdm

Model = Callable[[torch.Tensor], torch.Tensor]


def _tiles(height: int, width: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            yield top, left, min(top + tile, height), min(left + tile, width)


def run_tiled(
    model: Model,
    pixels: torch.Tensor,
    scale: int,
    *,
    tile: int = 192,
    overlap: int = 16,
    show_progress: bool = True,
) -> torch.Tensor:
    """`model(pixels)` for a (N, C, H, W) batch whose result is `scale` times larger, computed tile by
    tile (`tile` 0: in one go). The model pads a tile to the sizes it accepts itself (spandrel does)."""
    height, width = pixels.shape[-2:]
    if tile <= 0 or (height <= tile and width <= tile):
        return model(pixels)
    out: torch.Tensor | None = None
    boxes = list(_tiles(height, width, tile))
    for top, left, bottom, right in tqdm(
        boxes, desc="upscale", unit="tile", leave=False, disable=not show_progress
    ):
        y0, x0 = max(0, top - overlap), max(0, left - overlap)
        y1, x1 = min(height, bottom + overlap), min(width, right + overlap)
        result = model(pixels[..., y0:y1, x0:x1])
        if out is None:
            out = result.new_empty((*result.shape[:-2], height * scale, width * scale))
        out[..., top * scale : bottom * scale, left * scale : right * scale] = result[
            ..., (top - y0) * scale : (bottom - y0) * scale, (left - x0) * scale : (right - x0) * scale
        ]
    assert out is not None
    return out
