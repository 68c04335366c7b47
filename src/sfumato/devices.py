"""Device and dtype choice: the best device available, and a compute dtype that device runs fast."""

from __future__ import annotations

import torch

from sfumato.errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(name: str | None = None) -> torch.device:
    """`name` if given and available, else CUDA > MPS > CPU."""
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:N or mps)", field="device") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for, but this torch build sees no CUDA GPU", field="device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but MPS is not available here", field="device")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r} (use cpu, cuda or mps)", field="device")
    return device


def pick_dtype(device: torch.device, name: str | None = None) -> torch.dtype:
    """fp16 on GPUs; fp32 on CPUs, where half precision is far slower without AVX-512 (FACTS.md)."""
    if name is None:
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise UserError(f"unknown dtype {name!r} (use {', '.join(DTYPES)})", field="dtype") from None


def bf16_autocast_helps(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training up on `device`: GPUs with bf16 support, and CPUs with
    native bf16 matrix units (AMX or AVX512-BF16). On other CPUs bf16 runs far slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Private probes, stable since torch 2.1; absent ones mean "no".
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False
