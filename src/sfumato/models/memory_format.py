"""The memory layout the convolutional networks (UNet, VAE) run in.

channels_last (NHWC) lets oneDNN's CPU kernels skip the reorders NCHW needs around convolutions and
keeps GroupNorm/SiLU in the same layout; results are the same up to rounding (relative error 5e-6 on
an fp32 SD1.5 UNet call, 2e-5 on a VAE decode). Whether it is faster depends on the network, the
device and the dtype. Measured on a 2-core Sapphire Rapids CPU (AMX), SD1.5 at 512², one UNet call
with CFG / one VAE decode, best of three in one process (benchmarks/suite.py, part `compute_modes`,
2026-12-04):

| compute | NCHW UNet / VAE | channels_last UNet / VAE |
|---|---|---|
| fp32 | 5.90 s / 7.87 s | 6.24 s / 7.36 s |
| bf16 | 2.05 s / 3.76 s | 1.73 s / 1.41 s |

The VAE's first call in a process, which is what a CLI job pays, gains more (2026-12-05, fresh
process each, fp32, sfumato's allocator tuning): decode 1024² 39.5 s and 3.27 GiB of peak growth
against 46.6 s and 3.99 GiB in NCHW; encode 512² 3.6-3.7 s and 0.64-0.77 GiB against 4.0 s and
1.14 GiB; a whole 2-step 512² txt2img decoded in 10.1-10.3 s against 11.2-12.4 s.

So on CPUs the VAE is channels_last whatever the dtype, and the UNet only for half-precision compute
(a wash or a loss in fp32). GPUs keep NCHW until measured. The `channels_last` setting overrides the
choice for both networks.
"""

from __future__ import annotations

from typing import Literal

import torch

HALF = (torch.float16, torch.bfloat16)
Network = Literal["unet", "vae"]


def wants_channels_last(
    device: torch.device, dtype: torch.dtype, setting: bool | None = None, network: Network = "unet"
) -> bool:
    """The setting when given, else the measured default: on CPU, the VAE always and the UNet with
    half-precision compute."""
    if setting is not None:
        return setting
    return device.type == "cpu" and (network == "vae" or dtype in HALF)


def memory_layout(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def apply_memory_format(modules: list[torch.nn.Module], channels_last: bool) -> None:
    """Put the modules' 4-D weights in channels_last (or back in the contiguous layout); weights
    already in it are left as they are."""
    for module in modules:
        module.to(memory_format=memory_layout(channels_last))
