"""Process-wide runtime tuning, done once when a sfumato process starts working.

Why the allocator: glibc's malloc hands every large freed block straight back to the kernel (mmap
threshold, heap trimming), so each UNet call and VAE decode faults its gigabytes of activations in
again: 0.2-0.9 M minor page faults per SD1.5 UNet step and ~2.7 M per 512² VAE decode on CPU, 5-20 %
of the time (measured with benchmarks/suite.py). Keeping freed blocks in the heap removes the
faults; the price is memory not returned to the OS until `release_memory()` (a server calls it when it
unloads a model or goes idle), and a heap that fragments when blocks are huge.

Why blocks from `MMAP_THRESHOLD` up still get their own mapping (measured 2026-12-05, SD1.5 at full
size, one run each): with every block below 1 GiB kept in the heap, hires fix 512²→1024² peaked at
12.1 GiB at its 1024² decode (untuned glibc 8.6 GiB, diffusers 8.7 GiB); from 256 MiB up mmapped,
9.4 GiB, with the job as fast (104 s against 109 s). The cost: a 512² decode's 256 MiB activations
fault in again, 11.2 s against 9.9 s (two runs each), about 1 % of a 20-step image. UNet steps at 512²
use no block that large and keep the whole gain. And a VAE decode above 512² (where the decode is the
job's peak) runs in `peak_work()`: the heap trimmed first, blocks from 32 MiB up mapped and unmapped
as untuned glibc does, the tuning back afterwards. Hires fix 512²→1024² (2026-12-05): 10.15 GiB with
neither, 9.6 GiB with the trim alone (119 s, two runs each), 8.4-8.5 GiB with both (two runs; diffusers 8.6
GiB in the same session).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1
MMAP_THRESHOLD = 256 << 20
PEAK_WORK_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic threshold on 64-bit
_tuned = False


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_allocator() -> bool:
    """Keep freed blocks below `MMAP_THRESHOLD` for reuse (glibc only; elsewhere a no-op).

    True if applied."""
    global _tuned
    libc = _glibc()
    if libc is None:
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, _INT_MAX), (M_TOP_PAD, 256 << 20))
    _tuned = all(_mallopt(libc, option, value) for option, value in settings)
    return _tuned


def _mallopt(libc: ctypes.CDLL, option: int, value: int) -> bool:
    return libc.mallopt(ctypes.c_int(option), ctypes.c_int(value)) == 1


@contextmanager
def peak_work() -> Iterator[None]:
    """Run work whose own activations are the job's memory peak (a VAE decode above 512²) with the heap
    trimmed first and its large blocks mapped apart, so no kept or fragmented heap sits under the peak.

    The tuning comes back afterwards (if `tune_allocator` applied it), for the next job's UNet steps."""
    release_memory()
    libc = _glibc()
    lowered = _tuned and libc is not None and _mallopt(libc, M_MMAP_THRESHOLD, PEAK_WORK_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if lowered and libc is not None:
            _mallopt(libc, M_MMAP_THRESHOLD, MMAP_THRESHOLD)


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
