"""Adapter and merge benchmark on the full-size SD1.5 architecture (random weights).

- **LoRA**: time to apply a rank-32 LoRA on every layer kohya can train (UNet transformer blocks and
  ResNet convolutions, text-encoder attention and MLP) through the prompt-tag path
  (`NetworkPatcher.activate`), time to take it off again (exact restore), against reloading the
  checkpoint, which is what a tool without unpatching has to do. Peak RSS of that process.
  The same file through diffusers (`load_lora_weights` + `fuse_lora`, then `unfuse_lora` +
  `unload_lora_weights`) for the ratio.
- **Merge**: `sfumato merge` (weighted sum, fp16 out) of two full-size single files, in its own process:
  wall time, peak RSS and peak private (anonymous) memory, against the size of one checkpoint in
  memory (fp16 and fp32).

Each part runs in its own child process so each peak RSS is its own. Prints one JSON object.

    python benchmarks/lora_and_merge.py [--repeats 3] [--out benchmarks/out/lora_and_merge.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoints import SD15, build
from harness import OUT_DIR, THREADS, child_env, log, machine, peak_rss_gib, versions

RANK = 32


def lora_path() -> Path:
    return OUT_DIR / f"{SD15.version}-lora-r{RANK}.safetensors"


def role_lora(repeats: int) -> dict[str, Any]:
    import torch

    from sfumato.adapters.kohya_names import kohya_layers
    from sfumato.adapters.patcher import NetworkPatcher
    from sfumato.models.loader import load_checkpoint
    from sfumato.prompts.extra_networks import extract_extra_networks
    from sfumato.testing.tiny_networks import lora_pair, write_network

    torch.set_num_threads(THREADS)
    cpu = torch.device("cpu")
    started = time.perf_counter()
    model = load_checkpoint(SD15.path, device=cpu, dtype=torch.float32)
    first_load = time.perf_counter() - started
    layers = kohya_layers(model.unet, list(model.text_encoders), conv=True)
    if not lora_path().is_file():
        generator = torch.Generator().manual_seed(0)
        tensors = {}
        for name, module in layers.items():
            down, up = lora_pair(module, RANK, generator)
            tensors |= {f"{name}.lora_down.weight": down.half(), f"{name}.lora_up.weight": up.half() * 0.01}
            tensors[f"{name}.alpha"] = torch.tensor(float(RANK))
        write_network(lora_path(), tensors)
    patcher = NetworkPatcher(model, {"bench": lora_path()}.get, lambda network: "")
    calls = extract_extra_networks("<lora:bench:0.8>")[1]
    reference = model.unet.conv_in.weight.clone()
    apply_s, remove_s, reload_s = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        report = patcher.activate(calls)
        apply_s.append(time.perf_counter() - start)
        assert report.notes == [], report.notes
        start = time.perf_counter()
        patcher.activate([])
        remove_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_checkpoint(SD15.path, device=cpu, dtype=torch.float32)
        reload_s.append(time.perf_counter() - start)
    assert torch.equal(model.unet.conv_in.weight, reference)
    return {
        "lora_layers": len(layers),
        "lora_rank": RANK,
        "lora_bytes": lora_path().stat().st_size,
        "first_load_s": first_load,
        "apply_s": statistics.median(apply_s),
        "remove_s": statistics.median(remove_s),
        "reload_checkpoint_s": statistics.median(reload_s),
        "apply_runs_s": apply_s,
        "remove_runs_s": remove_s,
        "reload_runs_s": reload_s,
        "peak_rss_gib": peak_rss_gib(),
    }


def role_lora_diffusers(repeats: int) -> dict[str, Any]:
    """The same file through diffusers (peft): `load_lora_weights` + `fuse_lora(0.8)` to apply,
    `unfuse_lora` + `unload_lora_weights` to remove; fusing is what makes its inference cost what ours
    is (unfused, every LoRA layer adds two matmuls per call)."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(THREADS)
    pipe = StableDiffusionPipeline.from_single_file(
        str(SD15.path), config=str(SD15.config_dir), torch_dtype=torch.float32, local_files_only=True
    )
    reference = {k: v.clone() for k, v in pipe.unet.state_dict().items() if k.endswith("conv1.weight")}
    load_s, fuse_s, remove_s = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe.load_lora_weights(str(lora_path()), adapter_name="bench")
        load_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        pipe.fuse_lora(lora_scale=0.8)
        fuse_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        remove_s.append(time.perf_counter() - start)
    state = pipe.unet.state_dict()
    drift = max(float((state[k] - v).abs().max()) for k, v in reference.items())
    return {
        "apply_s": statistics.median(a + b for a, b in zip(load_s, fuse_s, strict=True)),
        "load_lora_weights_s": statistics.median(load_s),
        "fuse_s": statistics.median(fuse_s),
        "remove_s": statistics.median(remove_s),
        "restore_max_abs_error": drift,  # unfusing subtracts again: not bit-exact
        "peak_rss_gib": peak_rss_gib(),
    }


def role_merge() -> dict[str, Any]:
    import torch

    from sfumato.tools.merge import MergeRecipe, merge_checkpoints

    torch.set_num_threads(THREADS)
    first = SD15.path
    second = first.with_name(first.stem + "-copy.safetensors")
    if not second.is_file():
        shutil.copyfile(first, second)
    out = OUT_DIR / "merge-bench.safetensors"
    sampler = AnonSampler()
    sampler.start()
    start = time.perf_counter()
    merge_checkpoints([first, second], out, MergeRecipe("weighted", 0.5, "fp16"))
    seconds = time.perf_counter() - start
    sampler.stop()
    size = out.stat().st_size
    out.unlink()
    return {
        "merge_s": seconds,
        "peak_rss_gib": peak_rss_gib(),
        "peak_private_gib": sampler.peak / 2**30,  # anonymous memory: what the merge itself holds
        "checkpoint_gib_fp16": size / 2**30,
        "one_model_fp32_gib": size * 2 / 2**30,
    }


class AnonSampler(threading.Thread):
    """Peak of the process's anonymous (private) memory, sampled every 20 ms. Peak RSS also counts
    the memory-mapped sources' pages, which belong to the page cache and are given back on demand."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def stop(self) -> None:
        self._done.set()
        self.join()


def run(role: str, repeats: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--repeats", str(repeats)]
    log(f"running {role}")
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=child_env(), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{role} child failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--role", choices=["parent", "build", "lora", "lora-diffusers", "merge"], default="parent"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.role == "build":
        print(json.dumps(build(SD15)))
        return
    if args.role == "lora":
        print(json.dumps(role_lora(args.repeats)))
        return
    if args.role == "lora-diffusers":
        try:
            result = role_lora_diffusers(args.repeats)
        except Exception as exc:  # a diffusers/peft failure is a finding to report, not a crash of the suite
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result))
        return
    if args.role == "merge":
        print(json.dumps(role_merge()))
        return
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine(),
        "versions": versions(),
        "build": run("build", args.repeats),
        "lora": run("lora", args.repeats),
        "lora_diffusers": run("lora-diffusers", args.repeats),
        "merge": run("merge", args.repeats),
    }
    lora = report["lora"]
    report["lora"]["apply_vs_reload"] = lora["apply_s"] / lora["reload_checkpoint_s"]
    report["lora"]["remove_vs_reload"] = lora["remove_s"] / lora["reload_checkpoint_s"]
    theirs = report["lora_diffusers"]
    report["ratio_ours_over_diffusers"] = {
        "apply_s": lora["apply_s"] / theirs["apply_s"],
        "remove_s": lora["remove_s"] / theirs["remove_s"],
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
