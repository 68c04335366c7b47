"""Low-memory mode: weights rest in the checkpoint's own half precision and each layer upcasts its own
weights only for the duration of its forward.

Why: on a CPU the compute dtype is fp32 (half precision is slow or unsupported there), so a normal load
converts an fp16 checkpoint to fp32 and holds twice the file's size (SD1.5: 4.3 GB instead of 2.1 GB;
SDXL: 13.9 GB instead of 6.9 GB). Here convolution, linear and embedding weights stay the fp16
tensors of the memory-mapped safetensors file (no copy at load: their pages belong to the page cache,
which the kernel can drop), and a forward pre-hook swaps in an fp32 copy that the post-hook drops
again. fp16 → fp32 is exact, so images are bit-identical to the normal mode's; the price is one
conversion of every weight per call (measured by benchmarks/suite.py). Small parameters (norms,
biases of unhooked modules) are converted once.

Written here rather than with diffusers' `apply_layerwise_casting` because that hook converts the
fp32 copy back to fp16 after every forward (a second conversion per call, and the file mapping is
replaced by anonymous memory after the first call) and leaves skipped norm layers in fp16.

The modules then report the storage dtype for `next(module.parameters()).dtype`; code that needs the
dtype to feed a network asks `compute_dtype(module)`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

UPCAST_LAYERS = (nn.Conv2d, nn.Linear, nn.Embedding)
_COMPUTE_DTYPE = "_sfumato_compute_dtype"
_STORED = "_sfumato_stored_parameters"


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype `module` computes in: its parameters' dtype, unless its weights are stored lower."""
    return getattr(module, _COMPUTE_DTYPE, None) or next(module.parameters()).dtype


def _upcast(module: nn.Module, args: Any) -> None:
    dtype = getattr(module, _COMPUTE_DTYPE)
    stored = {name: p for name, p in module._parameters.items() if p is not None}
    setattr(module, _STORED, stored)
    for name, parameter in stored.items():
        module._parameters[name] = nn.Parameter(parameter.to(dtype), requires_grad=False)


def _restore(module: nn.Module, args: Any, output: Any) -> Any:
    module._parameters.update(getattr(module, _STORED))
    delattr(module, _STORED)
    return output


def keep_weights_stored(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Compute in `dtype` while the large layers' weights keep their (lower) stored dtype."""
    for sub in module.modules():
        own = [p for p in sub.parameters(recurse=False) if p.is_floating_point()]
        if isinstance(sub, UPCAST_LAYERS) and any(p.dtype != dtype for p in own):
            setattr(sub, _COMPUTE_DTYPE, dtype)
            sub.register_forward_pre_hook(_upcast)
            sub.register_forward_hook(_restore)
            continue
        for name, parameter in list(sub._parameters.items()):
            if parameter is not None and parameter.is_floating_point() and parameter.dtype != dtype:
                sub._parameters[name] = nn.Parameter(parameter.to(dtype), requires_grad=False)
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                sub._buffers[name] = buffer.to(dtype)
    setattr(module, _COMPUTE_DTYPE, dtype)
    return module


def stored_bytes(module: nn.Module) -> int:
    """Bytes the module's parameters hold at rest."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
