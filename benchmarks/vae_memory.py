"""Peak memory and time of one SD-VAE decode or encode, whole and in tiles, per image size.

What `sfumato.models.vae_tiling` decides with: the peak working set of the whole work, expressed as a
number of full-resolution activations of the compute dtype (decode: 256 × H × W, `PEAK_ACTIVATIONS`;
encode: 128 × H × W, `PEAK_ENCODE_ACTIVATIONS`), and what tiling costs in time. Each (work, size) runs
in its own child process (a fresh peak RSS): the VAE (SD's architecture, random weights: memory and
time do not depend on them) is built first, then the whole work (its peak RSS; `whole_first_s`), the
tiled work (diffusers' own tiles: 64 latents, 512 pixels; an encode up to 512² is one tile, so whole)
and the whole work again (`whole_s`, without the first call's set-up at that size).

    python benchmarks/vae_memory.py [--encode] [SIZE ...]      # default: decode at 256 512 768
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from harness import HERE, THREADS, peak_rss_gib, run_child


def measure(work: str, size: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL

    from sfumato import runtime
    from sfumato.models.vae_tiling import decode_bytes, encode_bytes

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
    if work == "decode":
        data, width = torch.randn(1, 4, size // 8, size // 8), 256
        warm_up, estimate = torch.zeros(1, 4, 8, 8), decode_bytes(vae, data)

        def whole() -> torch.Tensor:
            return vae.decode(data).sample

        def tiled() -> torch.Tensor:
            return vae.tiled_decode(data).sample
    else:
        data, width = torch.rand(1, 3, size, size) * 2 - 1, 128
        warm_up, estimate = torch.zeros(1, 3, 64, 64), encode_bytes(vae, data)

        def whole() -> torch.Tensor:
            return vae.encode(data).latent_dist.mean

        def tiled() -> torch.Tensor:
            vae.enable_tiling()
            try:
                return vae.encode(data).latent_dist.mean
            finally:
                vae.disable_tiling()

    with torch.no_grad():
        (vae.decode if work == "decode" else vae.encode)(warm_up)  # oneDNN set up outside the measurement
        before = peak_rss_gib()
        start = time.perf_counter()
        whole_result = whole()
        whole_s = time.perf_counter() - start
        whole_peak = peak_rss_gib() - before
        start = time.perf_counter()
        tiled_result = tiled()
        tiled_s = time.perf_counter() - start
        start = time.perf_counter()
        whole()  # again: the first call at a new size also pays oneDNN's set-up for that size
        whole_again_s = time.perf_counter() - start
    activation_gib = width * size * size * 4 / 2**30
    return {
        "work": work,
        "size": size,
        "whole_first_s": round(whole_s, 3),
        "whole_s": round(whole_again_s, 3),
        "tiled_s": round(tiled_s, 3),
        "tiled_over_whole": round(tiled_s / whole_again_s, 3),
        "whole_peak_gib": round(whole_peak, 3),
        "activation_gib": round(activation_gib, 4),
        "peak_in_activations": round(whole_peak / activation_gib, 2),
        "estimate_gib": round(estimate / 2**30, 3),
        "tiled_max_abs_difference": round(float((tiled_result - whole_result).abs().max()), 4),
    }


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--child":
        print(json.dumps(measure(argv[1], int(argv[2]))))
        return
    work = "encode" if "--encode" in argv else "decode"
    sizes = [int(a) for a in argv if a != "--encode"] or [256, 512, 768]
    runs = [run_child(HERE / "vae_memory.py", ["--child", work, str(s)], f"VAE {work} {s}²") for s in sizes]
    print(json.dumps({"runs": runs}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
