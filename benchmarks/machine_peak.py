"""The machine's limit and the work a job needs: GEMM peak per dtype, FLOPs per UNet call and VAE decode.

Peak: the best of several large square matrix products (n = 4096) at the benchmark's 2 threads, in fp32
and bf16 (on CPUs with AMX or AVX-512 BF16, bf16 is several times faster; elsewhere it is emulated and
far slower). FLOPs: torch's FlopCounterMode over one forward pass on the meta device (shapes only, no
compute), so a UNet call's achieved GFLOP/s = FLOPs / measured seconds, and its share of the peak is
how close the kernels run to the hardware. SD1.5 at 512² with CFG (batch 2) counts 1.607 TFLOP.

    python benchmarks/machine_peak.py '{"sd15": [512, 1024], "sdxl": [1024]}'
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from checkpoints import MODELS, RandomModel
from harness import THREADS

GEMM_SIZE = 4096
GEMM_REPEATS = 5


def gemm_gflops(dtype_name: str) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(GEMM_SIZE, GEMM_SIZE).to(dtype)
    b = torch.randn(GEMM_SIZE, GEMM_SIZE).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, kernel selection
    best = float("inf")
    for _ in range(GEMM_REPEATS):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * GEMM_SIZE**3 / best / 1e9


def count_cpu_attention() -> None:
    """Teach torch's FLOP counter the CPU flash-attention op (2·2·B·H·Lq·Lk·D, as for the CUDA ones):
    torch 2.13 registers formulas only for the CUDA attention kernels, so CPU attention counted 0."""
    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_registry or op.default in flop_registry:
        return

    @register_flop_formula(op)
    def _flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


def call_flops(model: RandomModel, size: int) -> dict[str, float]:
    """FLOPs of one UNet call with CFG (batch 2) and of one VAE decode (batch 1) at size²."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    latent = size // 8
    with torch.device("meta"):
        unet = UNet2DConditionModel(**model.unet_config)
        vae = AutoencoderKL(**model.vae_config)
        width = unet.config.cross_attention_dim
        x = torch.randn(2, 4, latent, latent)
        added = None
        if model.family == "sdxl":
            added = {"text_embeds": torch.randn(2, 1280), "time_ids": torch.randn(2, 6)}
        with FlopCounterMode(display=False) as unet_count:
            unet(
                x,
                torch.tensor([500, 500]),
                encoder_hidden_states=torch.randn(2, 77, width),
                added_cond_kwargs=added,
            )
        with FlopCounterMode(display=False) as vae_count:
            vae.decode(torch.randn(1, 4, latent, latent))
    return {
        "unet_call_tflop": unet_count.get_total_flops() / 1e12,
        "vae_decode_tflop": vae_count.get_total_flops() / 1e12,
    }


def main(sizes: dict[str, list[int]]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(THREADS)
    flops = {
        f"{name}@{size}": call_flops(MODELS[name], size) for name, values in sizes.items() for size in values
    }
    return {
        "threads": THREADS,
        "gemm_size": GEMM_SIZE,
        "gemm_gflops": {name: round(gemm_gflops(name), 1) for name in ("float32", "bfloat16")},
        "flops": {key: {k: round(v, 4) for k, v in value.items()} for key, value in flops.items()},
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
