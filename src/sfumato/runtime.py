"""Process-wide runtime tuning, done once when a sfumato process starts working.

Why the allocator: glibc's malloc hands every large freed block straight back to the kernel (mmap
threshold, heap trimming), so each UNet call and VAE decode faults its gigabytes of activations in
again: 0.2-0.9 M minor page faults per SD1.5 UNet step and ~2.7 M per 512² VAE decode on CPU, 5-20 %
of the time (measured by benchmarks/sd15_txt2img.py). Keeping freed memory in the heap removes the
faults; the price is up to ~0.3 GiB more peak RSS and memory not returned to the OS until
`release_memory()` (a server calls it when it unloads a model or goes idle).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_allocator() -> bool:
    """Keep large freed blocks for reuse (glibc only; elsewhere a no-op). True if applied."""
    libc = _glibc()
    if libc is None:
        return False
    settings = ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, _INT_MAX), (M_TOP_PAD, 256 << 20))
    return all(libc.mallopt(ctypes.c_int(option), ctypes.c_int(value)) == 1 for option, value in settings)


def release_memory() -> None:
    """Give the heap's free memory back to the OS (after unloading a model, or when idle)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))


def configure(threads: int | None = None) -> None:
    """Everything a sfumato process sets before loading models."""
    tune_allocator()
    if threads:
        torch.set_num_threads(threads)
