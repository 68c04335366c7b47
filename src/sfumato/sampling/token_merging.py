"""Token merging (ToMe for SD, Bolya & Hoffman 2023): an opt-in approximation that merges similar
self-attention tokens at the UNet's full-resolution level, so attention runs on fewer tokens.

We use the `tomesd` package exactly as A1111 does (no random partitions, self-attention only, the
full-resolution level only): it patches diffusers' `BasicTransformerBlock` in place and, at ratio 0 or
once removed, the UNet computes bit for bit what it did before (tested). The patch lives only for one
sampling run, so a request without token merging that follows is exact. SDXL has no attention at its
full-resolution level, so there (as in A1111) the ratio changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import tomesd
import torch

from sfumato.request import GenerationRequest


def merging_ratio(request: GenerationRequest, *, hires: bool) -> float:
    """A1111's rule: the hires pass uses `token_merging_ratio_hr`, or when that is 0 the first pass's."""
    if hires:
        return request.token_merging_ratio_hr or request.token_merging_ratio
    return request.token_merging_ratio


@contextmanager
def token_merging(unet: torch.nn.Module, ratio: float) -> Iterator[None]:
    """The UNet patched with ToMe at `ratio` (0: untouched) for the duration, always unpatched after."""
    if ratio <= 0:
        yield
        return
    tomesd.apply_patch(
        unet, ratio=ratio, use_rand=False, merge_attn=True, merge_crossattn=False, merge_mlp=False
    )
    try:
        yield
    finally:
        tomesd.remove_patch(unet)
