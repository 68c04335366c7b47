"""The benchmark suite: every performance figure of sfumato against diffusers, from one command.

    python benchmarks/suite.py                 # full settings (about an hour on 2 cores)
    python benchmarks/suite.py --quick         # short settings, same parts (about 10 minutes)
    python benchmarks/suite.py --only txt2img,approximations --repeats 3

Parts (see benchmarks/README.md for every field):
- `peak`: the machine's fp32/bf16 GEMM peak and the FLOPs of each UNet call and VAE decode;
- `profile`: where a UNet call's time goes, by op group, with each group's achieved GFLOP/s;
- `compute_modes`: one UNet call and one VAE decode in NCHW / channels_last × fp32 / bf16, with errors;
- `txt2img`, `img2img`, `hires`, `sdxl`: ours against diffusers' pipeline on the same single file, in
  alternating child processes (ABBA), medians and ratios, UNet throughput as a share of the fp32 peak;
- `approximations`: each opt-in approximation alone and all together against the exact path, in one
  warm process (seconds, UNet calls, PSNR against the exact image);
- `compiled`: txt2img with the UNet through torch.compile (freezing), as `serve --compile` runs it:
  compile time with a cold and with a kept cache, the warm per-image time against the same process's
  eager image and against diffusers' (from the `txt2img` part of the same run), PSNR against eager;
  `compiled_hires` the same for the hires fix (two image shapes, so two compiles per process);
- `lora`: apply/remove a rank-32 LoRA on 308 layers, ours against diffusers (peft), and a merge;
- `server`: `sfumato serve` from spawn to first image.

The report (machine, versions, settings, every run) goes to benchmarks/results/suite-{full,quick}.json
unless --out says otherwise; that folder is committed, so the git history holds the before/after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checkpoints import MODELS
from generation import SCENARIO_MODELS
from harness import HERE, OUT_DIR, abba, log, machine, median_of, ratios, run_child, versions, warm_page_cache

SCENARIOS = ("txt2img", "img2img", "hires", "sdxl")
COMPILED_PARTS = {"compiled": "txt2img", "compiled_hires": "hires"}
PARTS = ("peak", "compute_modes", "profile", *SCENARIOS, "approximations", *COMPILED_PARTS, "lora", "server")

SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "txt2img": {"steps": 20, "size": 512},
        "img2img": {"steps": 20, "size": 512},
        "hires": {"steps": 20, "size": 512, "hires_steps": 10},
        "sdxl": {"steps": 2, "size": 1024},
        "approximations": {"steps": 20, "size": 512},
        "server": {"steps": 1, "size": 512},
        "lora_repeats": 3,
        "compute_modes": {"size": 512, "repeats": 3},
    },
    "quick": {
        "txt2img": {"steps": 4, "size": 256},
        "img2img": {"steps": 4, "size": 256},
        "hires": {"steps": 4, "size": 256, "hires_steps": 2},
        "sdxl": {"steps": 1, "size": 512},
        "approximations": {"steps": 4, "size": 256},
        "server": {"steps": 1, "size": 256},
        "lora_repeats": 1,
        "compute_modes": {"size": 256, "repeats": 2},
    },
}

# Each opt-in approximation as request fields (alone), then combinations.
APPROXIMATIONS: dict[str, dict[str, Any]] = {
    "ngms": {"s_min_uncond": 3.0},  # A1111's "Negative Guidance minimum sigma", odd steps below sigma 3
    "tome": {"token_merging_ratio": 0.5},  # A1111's token merging through tomesd
    "deepcache": {"deepcache_interval": 3},  # the full UNet every 3rd step, the shallow branch between
    "deepcache_2": {"deepcache_interval": 2},  # every other step
    "taesd_decode": {"sd_vae_decode_method": "TAESD"},  # final decode with a TAESD-architecture decoder
    "bf16": {"dtype": "bf16"},  # --dtype bf16: bf16 weights and compute, channels_last (AMX CPUs)
}
_ALL = {**APPROXIMATIONS["ngms"], **APPROXIMATIONS["tome"], **APPROXIMATIONS["deepcache"]}
COMBINATIONS: dict[str, dict[str, Any]] = {
    "all_together": {**_ALL, **APPROXIMATIONS["taesd_decode"]},
    "all_together_bf16": {**_ALL, **APPROXIMATIONS["taesd_decode"], "dtype": "bf16"},
    # the two least costly in the embedded model's checker accuracy (benchmarks/README.md)
    "bf16_deepcache_2": {"deepcache_interval": 2, "dtype": "bf16"},
}

# Scenarios also run once with sfumato's low-memory mode (weights kept fp16, upcast per layer).
LOW_MEMORY_SCENARIOS = ("txt2img", "sdxl")

SIDE_KEYS = (
    "load_s",
    "image_s",
    "unet_step_s",
    "unet_step_min_s",
    "text_encoder_s",
    "vae_encode_s",
    "vae_decode_s",
    "peak_rss_gib",
    "other_load_cores",
)


def _side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    side: dict[str, Any] = dict(median_of(runs, SIDE_KEYS))
    side["unet_calls"] = runs[0]["unet_calls"]
    side["finite"] = all(r["finite"] for r in runs)
    side["attention_processor"] = runs[0]["attention_processor"]
    side["runs"] = [
        {k: v for k, v in r.items() if k not in ("attention_processor", "scheduler_config")} for r in runs
    ]
    return side


def _throughput(
    side: dict[str, Any], flops: dict[str, float] | None, peak_gflops: float | None
) -> dict[str, Any]:
    """Achieved GFLOP/s of the fastest UNet call and of the VAE decode, and their shares of the peak."""
    if not flops or not peak_gflops:
        return {}
    unet = flops["unet_call_tflop"] * 1e3 / side["unet_step_min_s"]
    out = {"unet_gflops": round(unet, 1), "unet_share_of_fp32_peak": round(unet / peak_gflops, 3)}
    if side.get("vae_decode_s"):
        vae = flops["vae_decode_tflop"] * 1e3 / side["vae_decode_s"]
        out |= {
            "vae_decode_gflops": round(vae, 1),
            "vae_decode_share_of_fp32_peak": round(vae / peak_gflops, 3),
        }
    return out


def scenario(
    name: str, settings: dict[str, Any], repeats: int, peak: dict[str, Any] | None
) -> dict[str, Any]:
    model = MODELS[SCENARIO_MODELS[name]]
    if not model.ready():
        run_child(HERE / "checkpoints.py", [SCENARIO_MODELS[name]], f"build {model.version}")
    warm_s = warm_page_cache(model.path)
    arguments = [name, str(settings["steps"]), str(settings["size"]), str(settings.get("hires_steps", 0))]
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "diffusers": []}
    order = abba(repeats)
    for side in order:
        runs[side].append(run_child(HERE / "generation.py", [side, *arguments], f"{name} {side}"))
    ours, theirs = _side(runs["ours"]), _side(runs["diffusers"])
    low_memory = None
    if name in LOW_MEMORY_SCENARIOS:
        low = run_child(HERE / "generation.py", ["ours-low-memory", *arguments], f"{name} ours low-memory")
        low_memory = {
            k: low[k] for k in ("load_s", "image_s", "unet_step_min_s", "peak_rss_gib", "unet_calls")
        }
        low_memory["ratio_over_ours"] = ratios(low_memory, ours, ("load_s", "image_s", "peak_rss_gib"))
        low_memory["ratio_over_diffusers"] = ratios(low_memory, theirs, ("load_s", "image_s", "peak_rss_gib"))
    flops = None
    if peak:
        flops = peak["flops"].get(f"{SCENARIO_MODELS[name]}@{settings['size']}")
    fp32_peak = peak["gemm_gflops"]["float32"] if peak else None
    ours |= _throughput(ours, flops, fp32_peak)
    theirs |= _throughput(theirs, flops, fp32_peak)
    return {
        "settings": {
            **settings,
            "checkpoint": model.path.name,
            "order": order,
            "page_cache_warm_s": round(warm_s, 1),
        },
        "diffusers_scheduler": runs["diffusers"][0]["scheduler_config"],
        "ours": ours,
        "diffusers": theirs,
        "same_unet_calls": ours["unet_calls"] == theirs["unet_calls"],
        "ours_low_memory": low_memory,
        "ratio_ours_over_diffusers": ratios(
            ours,
            theirs,
            ("load_s", "image_s", "unet_step_s", "unet_step_min_s", "vae_decode_s", "peak_rss_gib"),
        ),
    }


def approximations(settings: dict[str, Any], diffusers_image_s: float | None) -> dict[str, Any]:
    chosen = {**APPROXIMATIONS, **COMBINATIONS}
    arguments = [
        "approximations",
        "txt2img",
        str(settings["steps"]),
        str(settings["size"]),
        "0",
        json.dumps(chosen),
    ]
    result = run_child(HERE / "generation.py", arguments, "approximations")
    exact = statistics.mean(result["exact_image_s"])
    for entry in result["approximations"].values():
        entry["speedup_vs_exact"] = round(exact / entry["image_s"], 3)
        if diffusers_image_s:
            entry["ratio_vs_diffusers_txt2img"] = round(entry["image_s"] / diffusers_image_s, 3)
    result["settings"] = settings
    return result


def compiled(
    scenario: str, settings: dict[str, Any], diffusers_image_s: float | None, peak: dict[str, Any] | None
) -> dict[str, Any]:
    """The compiled path twice: with an emptied inductor cache (eager reference image, then compiled
    images: three of txt2img, two of the slower hires fix), then with the cache that run left (one
    image: the cached compile's cost)."""
    cache = OUT_DIR / "compile-cache"
    shutil.rmtree(cache, ignore_errors=True)
    shape = [str(settings["steps"]), str(settings["size"]), str(settings.get("hires_steps", 0))]
    common = ["compiled", scenario, *shape, str(cache)]
    images = "3" if scenario == "txt2img" else "2"
    cold = run_child(
        HERE / "generation.py", [*common, images, "eager-first"], f"compiled {scenario}, cold cache"
    )
    warm = run_child(
        HERE / "generation.py", [*common, "1", "compiled-only"], f"compiled {scenario}, kept cache"
    )
    result: dict[str, Any] = {"settings": settings, "cold_cache": cold, "kept_cache": warm}
    result["warm_image_over_eager"] = round(cold["warm_image_s"] / cold["eager"]["image_s"], 3)
    if diffusers_image_s:
        result["warm_image_over_diffusers"] = round(cold["warm_image_s"] / diffusers_image_s, 3)
    flops = peak["flops"].get(f"{SCENARIO_MODELS[scenario]}@{settings['size']}") if peak else None
    if flops and scenario == "txt2img":  # a hires image's steps run at two sizes
        # a step interval is the UNet call plus the sampler's update: a lower bound on the UNet's rate
        gflops = flops["unet_call_tflop"] * 1e3 / cold["warm_step_interval_min_s"]
        result["unet_gflops_at_least"] = round(gflops, 1)
        result["unet_share_of_fp32_peak_at_least"] = round(gflops / peak["gemm_gflops"]["float32"], 3)
    return result


def lora(repeats: int) -> dict[str, Any]:
    script = HERE / "lora_and_merge.py"
    ours = run_child(script, ["--role", "lora", "--repeats", str(repeats)], "lora ours")
    theirs = run_child(script, ["--role", "lora-diffusers", "--repeats", str(repeats)], "lora diffusers")
    merge = run_child(script, ["--role", "merge"], "merge")
    return {
        "ours": ours,
        "diffusers": theirs,
        "ratio_ours_over_diffusers": ratios(ours, theirs, ("apply_s", "remove_s", "peak_rss_gib")),
        "merge": merge,
    }


def headline(report: dict[str, Any]) -> list[str]:
    lines = []
    for name in SCENARIOS:
        if "ratio_ours_over_diffusers" in report.get(name, {}):
            r = report[name]["ratio_ours_over_diffusers"]
            lines.append(
                f"{name:8s} image {report[name]['ours']['image_s']:8.2f} s vs {report[name]['diffusers']['image_s']:8.2f} s"
                f"  ratio {r['image_s']}  load ratio {r['load_s']}  RSS ratio {r['peak_rss_gib']}"
                f"  UNet share of fp32 peak {report[name]['ours'].get('unet_share_of_fp32_peak')}"
            )
    for part in COMPILED_PARTS:
        compiled_part = report.get(part, {})
        if "warm_image_over_eager" in compiled_part:
            cold, kept = compiled_part["cold_cache"], compiled_part["kept_cache"]
            lines.append(
                f"{part} warm image {cold['warm_image_s']:.2f} s: ×{compiled_part['warm_image_over_eager']} eager, "
                f"×{compiled_part.get('warm_image_over_diffusers')} diffusers; compile {sum(cold['compile_s']):.1f} s "
                f"cold, {sum(kept['compile_s']):.1f} s with the kept cache"
            )
    for name, entry in report.get("approximations", {}).get("approximations", {}).items():
        lines.append(f"approx {name:18s} ×{entry['speedup_vs_exact']} PSNR {entry['psnr_db']} dB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short settings (small sizes, few steps)")
    parser.add_argument("--only", help=f"comma-separated parts (default all): {', '.join(PARTS)}")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per side (ABBA); medians")
    parser.add_argument("--out", type=Path, help="report path (default benchmarks/results/suite-MODE.json)")
    args = parser.parse_args()
    parts = args.only.split(",") if args.only else list(PARTS)
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    mode = "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    started = time.perf_counter()
    report: dict[str, Any] = {
        "mode": mode,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "versions": versions(),
    }
    report["parts"] = parts
    out = args.out or HERE / "results" / f"suite-{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def measure(part: str, run: Callable[[], Any]) -> None:
        """Run one part; a failed child is recorded as the part's error, and the report is saved after
        every part, so an hour of figures never hangs on the last one."""
        try:
            report[part] = run()
        except SystemExit as exc:
            report[part] = {"error": str(exc)}
            log(f"{part} failed: {exc}")
        report["wall_s"] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(report, indent=2) + "\n")

    if "peak" in parts or any(p in parts for p in (*SCENARIOS, *COMPILED_PARTS)):
        sizes: dict[str, list[int]] = {}
        for name in SCENARIOS:
            sizes.setdefault(SCENARIO_MODELS[name], []).append(settings[name]["size"])
        measure("peak", lambda: run_child(HERE / "machine_peak.py", [json.dumps(sizes)], "peak"))
    peak = report.get("peak")
    if peak is not None and "error" in peak:
        peak = None
    if "compute_modes" in parts:
        modes = [str(settings["compute_modes"]["size"]), str(settings["compute_modes"]["repeats"])]
        measure("compute_modes", lambda: run_child(HERE / "compute_modes.py", modes, "compute_modes"))
    if "profile" in parts:
        size, calls = str(settings["txt2img"]["size"]), "2" if mode == "full" else "1"
        measure(
            "profile",
            lambda: {
                layout: run_child(HERE / "unet_profile.py", [size, calls, flag], f"profile {layout}")
                for layout, flag in (("nchw", "0"), ("channels_last", "1"))
            },
        )
    for name in SCENARIOS:
        if name in parts:
            measure(name, lambda name=name: scenario(name, settings[name], args.repeats, peak))
    if "approximations" in parts:
        diffusers_s = report.get("txt2img", {}).get("diffusers", {}).get("image_s")
        measure("approximations", lambda: approximations(settings["approximations"], diffusers_s))
    for part, name in COMPILED_PARTS.items():
        if part in parts:
            theirs = report.get(name, {}).get("diffusers", {}).get("image_s")
            measure(part, lambda name=name, theirs=theirs: compiled(name, settings[name], theirs, peak))
    if "lora" in parts:
        measure("lora", lambda: lora(settings["lora_repeats"]))
    if "server" in parts:
        server = [str(settings["server"]["steps"]), str(settings["server"]["size"])]
        measure("server", lambda: run_child(HERE / "server_ttfi.py", server, "server"))
    for line in headline(report):
        log(line)
    log(f"report written to {out}")


if __name__ == "__main__":
    main()
