"""What every benchmark shares: child processes, probes on modules, contention, peak RSS, machine facts.

Each measurement runs in its own child process (`python <script> --role <name> ...`, the last stdout
line is its JSON), so each peak RSS is its own and no run inherits another's heap. Parents import
nothing heavy. Timings on shared machines drift by ±25 % over minutes, so sides alternate in ABBA
order and medians are reported; `other_load_cores` says how busy the rest of the machine was.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
THREADS = 2


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, busy CPU-seconds of the whole machine, CPU-seconds of this process) for `other_load`."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields]
    busy = sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    own = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def other_load(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Average number of cores other processes kept busy between two snapshots (the contention that
    makes timings on a shared machine drift: a second busy process halves what 2 threads get)."""
    wall = after[0] - before[0]
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / wall) if wall > 0 else 0.0


class Probe:
    """Times every call of a module (forward pre/post hooks), notes how busy the rest of the machine
    was meanwhile, and checks the outputs are finite."""

    def __init__(self, module: Any) -> None:
        self.times: list[float] = []
        self.other_load: list[float] = []
        self.finite = True
        self._start = 0.0
        self._snapshot = (0.0, 0.0, 0.0)
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, module: Any, args: Any) -> None:
        self._snapshot = cpu_snapshot()
        self._start = time.perf_counter()

    def _post(self, module: Any, args: Any, output: Any) -> None:
        import torch

        self.times.append(time.perf_counter() - self._start)
        self.other_load.append(other_load(self._snapshot, cpu_snapshot()))
        tensor = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if hasattr(tensor, "last_hidden_state"):
            tensor = tensor.last_hidden_state
        if isinstance(tensor, torch.Tensor) and not bool(torch.isfinite(tensor).all()):
            self.finite = False


def peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(THREADS)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_child(script: Path, arguments: list[str], label: str) -> dict[str, Any]:
    """Run `script` with `arguments` in a fresh process; its last stdout line is the JSON result."""
    log(f"running {label}")
    started = time.perf_counter()
    command = [sys.executable, str(script), *arguments]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=child_env(), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{label}: child failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    headline = {
        k: round(result[k], 3) for k in ("load_s", "image_s", "unet_step_s", "peak_rss_gib") if k in result
    }
    log(f"{label} done in {time.perf_counter() - started:.1f} s: {json.dumps(headline)}")
    return result


def abba(repeats: int, sides: tuple[str, str] = ("ours", "diffusers")) -> list[str]:
    """A, B, B, A, A, B, ...: each side runs first as often as the other, so drift cancels."""
    order: list[str] = []
    for repeat in range(repeats):
        order += list(sides) if repeat % 2 == 0 else list(reversed(sides))
    return order


def median_of(runs: Iterable[dict[str, Any]], keys: Iterable[str]) -> dict[str, float | None]:
    """Per key, the median over the runs that report it."""
    runs = list(runs)
    out: dict[str, float | None] = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 4) if values else None
    return out


def ratios(ours: dict[str, Any], theirs: dict[str, Any], keys: Iterable[str]) -> dict[str, float | None]:
    """ours / theirs per key (below 1.0: ours is faster or smaller)."""
    return {k: round(ours[k] / theirs[k], 4) if ours.get(k) and theirs.get(k) else None for k in keys}


def warm_page_cache(path: Path) -> float:
    """Read a file once so every side loads it from the page cache (plain reads: no RSS here)."""
    start = time.perf_counter()
    with path.open("rb") as f:
        while f.read(64 << 20):
            pass
    return time.perf_counter() - start


def machine() -> dict[str, Any]:
    """The machine the figures belong to: CPU model and the vector/matrix extensions that decide which
    dtypes are fast (AVX-512 BF16 and AMX make bf16 several times faster than fp32)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    info["cpus"] = os.cpu_count()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")
        )
        flags = set(next(line for line in cpuinfo.splitlines() if line.startswith("flags")).split())
        for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"):
            info[flag] = flag in flags
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_gib"] = round(int(mem) / 1024**2, 1)
        info["loadavg_at_start"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return info


def versions() -> dict[str, str]:
    code = (
        "import torch, diffusers, transformers, json; print(json.dumps({'torch': torch.__version__, "
        "'diffusers': diffusers.__version__, 'transformers': transformers.__version__}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])
