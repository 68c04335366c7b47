"""How close SDPA runs to its own bound on SD1.5's attention shapes at 512² (CPU, fp32).

    python benchmarks/attention_bound.py [--threads 2]

Attention is not one GEMM: its softmax needs an exponential per score. For each attention shape of an
SD1.5 UNet call at 512² with CFG (batch 2, 8 heads) this times, best of five: SDPA as diffusers calls it
(q/k/v transposed views), SDPA on contiguous q/k/v, SDPA with the head width zero-padded to a wider one
(the same result: the padded columns add nothing), and for the largest shape the parts of its bound:
the exponentials of every score and QKᵀ as one bmm. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

# (query tokens, key tokens, head width): self-attention at 64², 32², 16² latents; cross-attention at 64²
SHAPES = ((4096, 4096, 40), (1024, 1024, 80), (256, 256, 160), (4096, 77, 40))
BATCH, HEADS = 2, 8


def best_seconds(work: Callable[[], object], repeats: int = 5) -> float:
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return round(min(times), 4)


def heads_view(tokens: int, width: int) -> torch.Tensor:
    """(batch, heads, tokens, width) as diffusers' attention processor makes it: a transposed view."""
    return torch.randn(BATCH, tokens, HEADS * width).view(BATCH, tokens, HEADS, width).transpose(1, 2)


def padded_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, width: int) -> torch.Tensor:
    def pad(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, width - x.shape[-1]))

    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), scale=q.shape[-1] ** -0.5)
    return out[..., : q.shape[-1]]


def measure(queries: int, keys: int, width: int) -> dict[str, float]:
    q, k, v = heads_view(queries, width), heads_view(keys, width), heads_view(keys, width)
    exact = F.scaled_dot_product_attention(q, k, v)
    row = {"sdpa_s": best_seconds(lambda: F.scaled_dot_product_attention(q, k, v))}
    qc, kc, vc = q.contiguous(), k.contiguous(), v.contiguous()
    row["sdpa_contiguous_s"] = best_seconds(lambda: F.scaled_dot_product_attention(qc, kc, vc))
    for wider in (48, 64, 96, 128):
        if width < wider <= 2 * width:
            row[f"sdpa_padded_{wider}_s"] = best_seconds(lambda wider=wider: padded_sdpa(q, k, v, wider))
            row[f"sdpa_padded_{wider}_max_error"] = float((padded_sdpa(q, k, v, wider) - exact).abs().max())
    return row


def bound_parts(queries: int, keys: int, width: int) -> dict[str, float]:
    """The exponentials of every score and QKᵀ as one bmm (PV is the same size of GEMM)."""
    scores = torch.randn(BATCH * HEADS, queries, keys)
    q, kt = torch.randn(BATCH * HEADS, queries, width), torch.randn(BATCH * HEADS, width, keys)
    exps = torch.empty_like(scores)
    exp_s = best_seconds(lambda: torch.exp(scores, out=exps))
    bmm_s = best_seconds(lambda: torch.bmm(q, kt, out=scores))
    flops = 2 * BATCH * HEADS * queries * keys * width
    return {
        "exponentials": BATCH * HEADS * queries * keys,
        "exp_s": exp_s,
        "qk_bmm_s": bmm_s,
        "qk_bmm_gflops": round(flops / bmm_s / 1e9, 1),
        "bound_s": round(exp_s + 2 * bmm_s, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report = {"threads": args.threads, "torch": torch.__version__}
    for queries, keys, width in SHAPES:
        report[f"{queries}x{keys}x{width}"] = measure(queries, keys, width)
    report["bound_4096x4096x40"] = bound_parts(*SHAPES[0])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
