"""Writing a safetensors file one tensor at a time.

`safetensors.torch.save_file` needs every tensor in memory at once, so a merge of two 7 GB checkpoints
would hold a whole third model before writing a byte. The format makes streaming easy (and no library
offers it): an 8-byte little-endian header length, a JSON header giving each tensor's dtype, shape and
byte range, then the bytes in that order. With the shapes and dtypes known in advance (they are the
first source's), the header is written first and each tensor's bytes as soon as it is computed.
The result is byte-compatible with `safe_open` (checked in the tests).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import torch

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for side in shape:
        count *= side
    return count * torch.empty((), dtype=dtype).element_size()


def _header(layout: list[tuple[str, tuple[int, ...], torch.dtype]], metadata: dict[str, str]) -> bytes:
    entries: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape, dtype in layout:
        size = _nbytes(shape, dtype)
        entries[name] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned


def write_streamed(
    path: Path,
    layout: list[tuple[str, tuple[int, ...], torch.dtype]],
    tensors: Iterable[torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `tensors` (yielded in `layout`'s order, each of its shape and dtype) to `path`, through a
    `.partial` file renamed into place, so a failure never leaves a half-written model."""
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as handle:
            header = _header(layout, metadata or {})
            handle.write(struct.pack("<Q", len(header)))
            handle.write(header)
            _write_all(handle, layout, iter(tensors))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _write_all(
    handle: BinaryIO, layout: list[tuple[str, tuple[int, ...], torch.dtype]], tensors: Iterator[torch.Tensor]
) -> None:
    for name, shape, dtype in layout:
        tensor = next(tensors)
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(
                f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, the header says {shape} {dtype}"
            )
        data = tensor.detach().contiguous().cpu().reshape(-1)
        handle.write(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
