"""One SD1.5 UNet call (CFG batch 2) and one VAE decode under each memory layout and compute dtype.

What the exact and the near-exact speed-ups are worth on this machine, measured on the same weights
and inputs in one process: NCHW vs channels_last; fp32, fp32 with oneDNN's bf16 math mode (fp32
tensors, bf16 multiplies inside convolutions and matmuls on AMX/AVX-512-BF16 CPUs: the CPU's
counterpart of TF32 on NVIDIA GPUs, which A1111 turns on by default) and bf16 weights. Each configuration runs
`repeats` times in rotation (so drift hits all alike); the best time is reported with its error
against fp32 NCHW (relative L2 of the output: fp32 rounding is about 1e-6, bf16 about 1e-2).

    python benchmarks/compute_modes.py SIZE REPEATS
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from checkpoints import SD15
from harness import THREADS, peak_rss_gib

# (weights dtype, channels_last, oneDNN fp32 math precision)
CONFIGS = (
    ("float32", False, "none"),
    ("float32", True, "none"),
    ("float32", False, "bf16"),
    ("float32", True, "bf16"),
    ("bfloat16", False, "none"),
    ("bfloat16", True, "none"),
)


def _math(precision: str) -> None:
    import torch

    torch.backends.mkldnn.matmul.fp32_precision = precision
    torch.backends.mkldnn.conv.fp32_precision = precision


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
    # One copy of the networks per weights dtype (bf16 ones are half the size); each configuration
    # sets its memory layout and math mode on them before it runs.
    networks: dict[str, tuple[Any, Any]] = {"float32": (model.unet.eval(), model.vae.eval())}
    unet = type(model.unet).from_config(model.unet.config).to(torch.bfloat16)
    unet.load_state_dict(model.unet.state_dict())
    vae = type(model.vae).from_config(model.vae.config).to(torch.bfloat16)
    vae.load_state_dict(model.vae.state_dict())
    networks["bfloat16"] = (unet.eval(), vae.eval())
    names = {
        config: config[0]
        + ("-bf16math" if config[2] != "none" else "")
        + ("-channels_last" if config[1] else "")
        for config in CONFIGS
    }
    times: dict[str, dict[str, list[float]]] = {name: {"unet": [], "vae": []} for name in names.values()}
    outputs: dict[str, tuple[Any, Any]] = {}
    with torch.no_grad():
        for _ in range(repeats):
            for config, name in names.items():
                dtype_name, channels_last, precision = config
                dtype = getattr(torch, dtype_name)
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                unet, vae = (module.to(memory_format=fmt) for module in networks[dtype_name])
                _math(precision)
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
                _math("none")
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
