"""Peak memory and time of one SD-VAE decode, whole and in tiles, per image size.

What `sfumato.models.vae_tiling` decides with: the peak working set of a whole decode, expressed as a
number of (256 × H × W) activations of the compute dtype (`PEAK_ACTIVATIONS`), and what tiling costs
in time. Each size runs in its own child process (a fresh peak RSS): the decoder (SD's VAE
architecture, random weights: memory and time do not depend on them) is built first, then one whole
decode, then one tiled decode (diffusers' `tiled_decode`, 64-latent tiles).

    python benchmarks/vae_decode_memory.py [SIZE ...]      # default 256 512 768
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from harness import HERE, THREADS, peak_rss_gib, run_child


def measure(size: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL

    from sfumato import runtime
    from sfumato.models.vae_tiling import decode_bytes

    runtime.configure(THREADS)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).eval()
    latents = torch.randn(1, 4, size // 8, size // 8)
    with torch.no_grad():
        vae.decode(torch.zeros(1, 4, 8, 8))  # oneDNN's kernels set up once, outside the measurement
        before = peak_rss_gib()
        start = time.perf_counter()
        whole = vae.decode(latents).sample
        whole_s = time.perf_counter() - start
        whole_peak = peak_rss_gib() - before
        start = time.perf_counter()
        tiled = vae.tiled_decode(latents).sample
        tiled_s = time.perf_counter() - start
    activation_gib = 256 * size * size * 4 / 2**30
    return {
        "size": size,
        "whole_s": round(whole_s, 3),
        "tiled_s": round(tiled_s, 3),
        "tiled_over_whole": round(tiled_s / whole_s, 3),
        "whole_peak_gib": round(whole_peak, 3),
        "activation_gib": round(activation_gib, 4),
        "peak_in_activations": round(whole_peak / activation_gib, 2),
        "estimate_gib": round(decode_bytes(vae, latents) / 2**30, 3),
        "tiled_max_abs_difference": round(float((tiled - whole).abs().max()), 4),
    }


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--size":
        print(json.dumps(measure(int(argv[1]))))
        return
    sizes = [int(a) for a in argv] or [256, 512, 768]
    runs = [run_child(HERE / "vae_decode_memory.py", ["--size", str(s)], f"VAE decode {s}²") for s in sizes]
    print(json.dumps({"runs": runs}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
