"""Where one SD1.5 UNet call (CFG batch 2, fp32) spends its time, and how close each kind of op runs
to the machine's GEMM peak: what bounds the exact path.

torch.profiler gives each aten op's self CPU time over `calls` calls (after one warm-up call);
torch's FlopCounterMode gives each op's FLOPs. Ops are grouped (convolution, matmul/linear, attention,
normalisation, elementwise/other) and each group reports its share of the call's time, its FLOPs and
its achieved GFLOP/s. Groups with no FLOPs (norms, activations, copies) are the memory-bound rest.

    python benchmarks/unet_profile.py SIZE CALLS [CHANNELS_LAST]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any

from checkpoints import SD15
from harness import THREADS
from machine_peak import count_cpu_attention

GROUPS = {
    "convolution": ("conv", "mkldnn_convolution"),
    "matmul": ("mm", "addmm", "bmm", "linear", "matmul", "baddbmm"),
    "attention": ("scaled_dot_product", "_scaled_dot_product", "_flash_attention", "_efficient_attention"),
    "normalisation": ("group_norm", "layer_norm", "native_group_norm", "native_layer_norm"),
}


def group_of(op: str) -> str:
    name = op.removeprefix("aten::").removeprefix("aten.")  # profiler and flop-counter spellings
    for group, prefixes in GROUPS.items():
        if any(name == p or name.startswith(p) for p in prefixes):
            return group
    return "elementwise/other"


def main(size: int, calls: int, channels_last: bool) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from sfumato import runtime
    from sfumato.models.loader import load_single_file

    runtime.configure(THREADS)
    count_cpu_attention()
    model = load_single_file(SD15.path, device=torch.device("cpu"), dtype=torch.float32)
    unet = model.unet.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unet.to(memory_format=fmt)
    latent = size // 8
    x = torch.randn(2, 4, latent, latent).contiguous(memory_format=fmt)
    context = torch.randn(2, 77, 768)
    timestep = torch.tensor([500, 500])
    with torch.no_grad():
        unet(x, timestep, encoder_hidden_states=context)  # warm-up
        with FlopCounterMode(display=False) as counter:
            unet(x, timestep, encoder_hidden_states=context)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                unet(x, timestep, encoder_hidden_states=context)
    flops: dict[str, float] = defaultdict(float)
    for op, count in counter.get_flop_counts()["Global"].items():
        flops[group_of(str(op))] += count
    seconds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        seconds[group_of(event.key)] += event.self_cpu_time_total / 1e6 / calls
    total = sum(seconds.values())
    return {
        "size": size,
        "calls": calls,
        "channels_last": channels_last,
        "call_s_profiled": round(total, 3),
        "call_tflop": round(sum(flops.values()) / 1e12, 4),
        "groups": {
            group: {
                "share_of_time": round(seconds[group] / total, 3),
                "seconds": round(seconds[group], 3),
                "tflop": round(flops.get(group, 0.0) / 1e12, 4),
                "gflops": round(flops[group] / seconds[group] / 1e9, 1) if flops.get(group) else None,
            }
            for group in sorted(seconds, key=seconds.get, reverse=True)  # type: ignore[arg-type]
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "1")))
