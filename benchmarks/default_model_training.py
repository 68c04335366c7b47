"""Training-step time of the embedded default model's networks, fp32 against bf16 autocast.

The default model's recipe (`scripts/train_default_model.py`) must fit 90 minutes on 2 cores, so its
step time decides how many steps each stage gets. This times one optimiser step (forward, loss,
backward, AdamW) of the recipe's UNet (batch 64 of 16×16 latents, 77 text states) and VAE (batch 64
of 32² crops) in fp32 and under `torch.autocast(bfloat16)` (what accelerate's `mixed_precision="bf16"`
does on CPU; weights and optimiser stay fp32), in rotation in one process, after warm-up steps.
bf16 is only worth it where the CPU has native bf16 matrix units (AMX, AVX512-BF16).

    python benchmarks/default_model_training.py [--steps 8]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import time
from typing import Any

from harness import HERE, THREADS, machine


def _recipe() -> Any:
    spec = importlib.util.spec_from_file_location(
        "recipe", HERE.parent / "scripts" / "train_default_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    import torch
    import torch.nn.functional as F

    from sfumato import runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per network and mode")
    args = parser.parse_args()
    runtime.configure(THREADS)
    recipe = _recipe()
    vae, _, unet = recipe.build_networks(0)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(64, 4, 16, 16, generator=generator)
    states = torch.randn(64, 77, recipe.TEXT_WIDTH, generator=generator)
    timesteps = torch.randint(0, 1000, (64,), generator=generator)
    crops = torch.rand(64, 3, recipe.VAE_CROP, recipe.VAE_CROP, generator=generator) * 2 - 1

    def unet_loss() -> torch.Tensor:
        return F.mse_loss(unet(latents, timesteps, states).sample.float(), latents)

    def vae_loss() -> torch.Tensor:
        posterior = vae.encode(crops).latent_dist
        return F.mse_loss(vae.decode(posterior.sample()).sample.float(), crops)

    networks = {"unet": (unet, unet_loss), "vae": (vae, vae_loss)}
    optimisers = {name: torch.optim.AdamW(net.parameters(), lr=1e-5) for name, (net, _) in networks.items()}
    modes = {
        "fp32": contextlib.nullcontext,
        "bf16_autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    }
    times: dict[str, list[float]] = {f"{n}_{m}": [] for n in networks for m in modes}
    for step in range(args.steps + 2):
        for name, (_, loss_of) in networks.items():
            for mode, context in modes.items():
                start = time.perf_counter()
                with context():
                    loss = loss_of()
                loss.backward()
                optimisers[name].step()
                optimisers[name].zero_grad(set_to_none=True)
                if step >= 2:  # the first two rounds set up oneDNN's kernels
                    times[f"{name}_{mode}"].append(time.perf_counter() - start)
    report: dict[str, Any] = {
        "machine": machine(),
        "steps": args.steps,
        "seconds_per_step": {key: round(statistics.median(v), 4) for key, v in times.items()},
    }
    for name in networks:
        fp32, bf16 = (report["seconds_per_step"][f"{name}_{m}"] for m in modes)
        report[f"{name}_bf16_over_fp32"] = round(bf16 / fp32, 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
