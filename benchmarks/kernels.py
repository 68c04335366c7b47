"""One SD1.5 UNet call (CFG batch 2) and one VAE decode under each memory layout and compute dtype.

What the exact and the near-exact speed-ups are worth on this machine, measured on the same weights
and inputs in one process: NCHW vs channels_last, fp32 vs bf16 weights. Each configuration runs
`repeats` times in rotation (so drift hits all alike); the best time is reported with its error
against fp32 NCHW (relative L2 of the output: fp32 rounding is about 1e-6, bf16 about 1e-2).

    python benchmarks/kernels.py SIZE REPEATS
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from checkpoints import SD15
from harness import THREADS, peak_rss_gib

CONFIGS = (("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True))


def main(size: int, repeats: int) -> dict[str, Any]:
    import torch

    from sfumato import runtime
    from sfumato.models.loader import load_single_file

    runtime.configure(THREADS)
    model = load_single_file(SD15.path, device=torch.device("cpu"), dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    latent = size // 8
    x = torch.randn(2, 4, latent, latent, generator=generator)
    context = torch.randn(2, 77, 768, generator=generator)
    timestep = torch.tensor([500, 500])
    z = torch.randn(1, 4, latent, latent, generator=generator)
    copies: dict[str, Any] = {}
    for dtype_name, channels_last in CONFIGS:
        dtype = getattr(torch, dtype_name)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        # Copies of the fp32 modules: each configuration owns its weights (bf16 ones are half the size).
        unet = type(model.unet).from_config(model.unet.config).to(dtype=dtype)
        unet.load_state_dict(model.unet.state_dict())
        vae = type(model.vae).from_config(model.vae.config).to(dtype=dtype)
        vae.load_state_dict(model.vae.state_dict())
        copies[f"{dtype_name}{'-channels_last' if channels_last else ''}"] = (
            unet.to(memory_format=fmt).eval(),
            vae.to(memory_format=fmt).eval(),
            dtype,
            fmt,
        )
    del model
    times: dict[str, dict[str, list[float]]] = {name: {"unet": [], "vae": []} for name in copies}
    outputs: dict[str, tuple[Any, Any]] = {}
    with torch.no_grad():
        for _ in range(repeats):
            for name, (unet, vae, dtype, fmt) in copies.items():
                start = time.perf_counter()
                out = unet(
                    x.to(dtype).contiguous(memory_format=fmt),
                    timestep,
                    encoder_hidden_states=context.to(dtype),
                ).sample
                times[name]["unet"].append(time.perf_counter() - start)
                start = time.perf_counter()
                pixels = vae.decode(z.to(dtype).contiguous(memory_format=fmt)).sample
                times[name]["vae"].append(time.perf_counter() - start)
                outputs[name] = (out.float(), pixels.float())
    reference = outputs["float32"]

    def error(a: Any, b: Any) -> float:
        return float((a - b).norm() / b.norm())

    return {
        "size": size,
        "repeats": repeats,
        "configs": {
            name: {
                "unet_call_s": round(min(t["unet"]), 3),
                "vae_decode_s": round(min(t["vae"]), 3),
                "unet_runs_s": [round(v, 3) for v in t["unet"]],
                "vae_runs_s": [round(v, 3) for v in t["vae"]],
                "unet_rel_error": error(outputs[name][0], reference[0]),
                "vae_rel_error": error(outputs[name][1], reference[1]),
            }
            for name, t in times.items()
        },
        "peak_rss_gib": peak_rss_gib(),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
