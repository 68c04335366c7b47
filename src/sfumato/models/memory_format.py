"""The memory layout the convolutional networks (UNet, VAE) run in.

channels_last (NHWC) lets oneDNN's CPU kernels skip the reorders NCHW needs around convolutions and
keeps GroupNorm/SiLU in the same layout; results are the same up to rounding (relative error 5e-6 on
an fp32 SD1.5 UNet call). Whether it is faster depends on the device and the dtype. Measured on a
2-core Sapphire Rapids CPU (AMX), SD1.5 at 512², one UNet call with CFG / one VAE decode
(benchmarks/suite.py, part `compute_modes`, 2026-12-04):

| compute | NCHW UNet / VAE | channels_last UNet / VAE |
|---|---|---|
| fp32 | 5.90 s / 7.87 s | 6.24 s / 7.36 s |
| bf16 | 2.05 s / 3.76 s | 1.73 s / 1.41 s |

So on CPUs it is the default for half-precision compute and not for fp32 (a wash there). GPUs keep
NCHW until measured. The `channels_last` setting overrides the choice.
"""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)


def wants_channels_last(device: torch.device, dtype: torch.dtype, setting: bool | None = None) -> bool:
    """The setting when given, else the measured default: CPU with half-precision compute."""
    if setting is not None:
        return setting
    return device.type == "cpu" and dtype in HALF


def apply_memory_format(modules: list[torch.nn.Module], channels_last: bool) -> None:
    """Put the modules' 4-D weights in channels_last (or back in the contiguous layout)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for module in modules:
        module.to(memory_format=layout)
