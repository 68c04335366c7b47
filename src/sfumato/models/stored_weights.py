"""Low-memory mode: weights rest where and as the checkpoint gave them (in RAM, in its own half
precision) and each layer brings its own weights to the compute device and dtype only for the duration
of its forward.

Why, on a CPU: the compute dtype is fp32 (half precision is slow or unsupported there), so a normal
load converts an fp16 checkpoint to fp32 and holds twice the file's size (SD1.5: 4.3 GB instead of
2.1 GB; SDXL: 13.9 GB instead of 6.9 GB). Here convolution, linear and embedding weights stay the fp16
tensors of the memory-mapped safetensors file (no copy at load: their pages belong to the page cache,
which the kernel can drop), and a forward pre-hook swaps in an fp32 copy that the post-hook drops
again. fp16 → fp32 is exact, so images are bit-identical to the normal mode's; the price is one
conversion of every weight per call (measured by benchmarks/suite.py).

Why, on a GPU (CUDA, MPS): the same hook is the offload. The weights rest in RAM, and the copy the
pre-hook makes goes to the device, so the device holds one layer's weights at a time besides the
activations: the UNet, the text encoders and the VAE are all off the device when idle, the way
A1111's --lowvram streams the UNet, at the price of moving every weight once per call.

Small parameters (norms, biases of unhooked modules) and buffers are converted and placed once.

Written here rather than with diffusers' `apply_layerwise_casting` (which converts the fp32 copy back
to fp16 after every forward, replaces the file mapping with anonymous memory after the first call and
leaves skipped norm layers in fp16) or accelerate's `cpu_offload` (which swaps the module's weights
for meta tensors, so a LoRA can no longer be patched into the stored weights in place and restored).

The modules then report the stored dtype and device for `next(module.parameters())`; code that feeds
a network asks `compute_dtype(module)` and `compute_device(module)`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

UPCAST_LAYERS = (nn.Conv2d, nn.Linear, nn.Embedding)
_COMPUTE = "_sfumato_compute"  # (dtype, device) a hooked module or a prepared root computes in
_STORED = "_sfumato_stored_parameters"


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype `module` computes in: its parameters' dtype, unless its weights are stored lower."""
    compute = getattr(module, _COMPUTE, None)
    return compute[0] if compute else next(module.parameters()).dtype


def compute_device(module: nn.Module) -> torch.device:
    """The device `module` computes on: its parameters' device, unless its weights rest elsewhere."""
    compute = getattr(module, _COMPUTE, None)
    return compute[1] if compute else next(module.parameters()).device


def _bring_in(module: nn.Module, args: Any) -> None:
    dtype, device = getattr(module, _COMPUTE)
    stored = {name: p for name, p in module._parameters.items() if p is not None}
    setattr(module, _STORED, stored)
    for name, parameter in stored.items():
        module._parameters[name] = nn.Parameter(parameter.to(device, dtype), requires_grad=False)


def _restore(module: nn.Module, args: Any, output: Any) -> Any:
    module._parameters.update(getattr(module, _STORED))
    delattr(module, _STORED)
    return output


def _placed(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`, and in `dtype` if it is floating point (ids and masks keep theirs)."""
    return tensor.to(device, dtype) if tensor.is_floating_point() else tensor.to(device)


def keep_weights_stored(
    module: nn.Module, dtype: torch.dtype, device: torch.device | None = None
) -> nn.Module:
    """Compute in `dtype` on `device` (None: where the weights are) while the large layers' weights
    keep their stored dtype and place."""
    compute_on = device or next(module.parameters()).device
    for sub in module.modules():
        own = [p for p in sub.parameters(recurse=False) if p.is_floating_point()]
        if isinstance(sub, UPCAST_LAYERS) and any(p.dtype != dtype or p.device != compute_on for p in own):
            setattr(sub, _COMPUTE, (dtype, compute_on))
            sub.register_forward_pre_hook(_bring_in)
            sub.register_forward_hook(_restore)
            continue
        for name, parameter in list(sub._parameters.items()):
            if parameter is not None:
                placed = _placed(parameter, dtype, compute_on)
                if placed is not parameter:
                    sub._parameters[name] = nn.Parameter(placed, requires_grad=False)
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None:
                sub._buffers[name] = _placed(buffer, dtype, compute_on)
    setattr(module, _COMPUTE, (dtype, compute_on))
    return module


def stored_bytes(module: nn.Module) -> int:
    """Bytes the module's parameters hold at rest."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
