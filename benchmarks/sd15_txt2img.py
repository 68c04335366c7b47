"""txt2img benchmark: sfumato vs diffusers' StableDiffusionPipeline on a full-size SD1.5 architecture.

One run measures both sides on the same single-file fp16 checkpoint (random weights, SD1.5 shapes,
built once and cached under benchmarks/out/): Euler a with the Automatic schedule, CFG 7, fp32
compute, 2 threads, seed 1, and prints one JSON object with, per side, the checkpoint load time, the
seconds per image, the median seconds per UNet step and the peak RSS, and the ratios ours/diffusers.

Each measurement runs in its own child process (`--role ours|diffusers`) so that peak RSS is per
side; the parent imports nothing heavy and only collects the children's JSON. With `--repeats R` the
sides alternate in ABBA order (ours, diffusers, diffusers, ours, ...) and medians are reported, because
timings on shared machines drift by ±25 % over minutes. See benchmarks/README.md.

    python benchmarks/sd15_txt2img.py                       # 20 steps, 512x512 (about 12 minutes)
    python benchmarks/sd15_txt2img.py --steps 3 --repeats 3 --out benchmarks/out/run.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"

# Bump when anything that changes the checkpoint's bytes changes (architecture, init, seed rule).
CHECKPOINT_VERSION = "sd15-random-v2"
WEIGHT_SEED = 0
WEIGHT_STD = 0.02

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed, sharp focus"
NEGATIVE_PROMPT = "blurry, low quality, watermark"
SEED = 1
CFG_SCALE = 7.0
THREADS = 2

# diffusers' closest match to A1111's "Euler a" + "Automatic" (k-diffusion's uniform schedule:
# timesteps linspace(999, 0, steps), initial noise scaled by sigma_max, 0 appended). diffusers
# interpolates sigmas linearly in t where k-diffusion interpolates log-sigma; at these timesteps the
# difference is in the sigmas only, not in the work done per step.
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerAncestralDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "steps_offset": 1,  # unused by "linspace"; 1 only silences diffusers' "outdated config" warning
    "rescale_betas_zero_snr": False,
}

CLIP_L_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

# UNet2DConditionModel's defaults are SD1.5's UNet except the cross-attention width (1280 there; CLIP-L's
# 768 in SD1.5).
UNET_CONFIG: dict[str, Any] = {"sample_size": 64, "cross_attention_dim": 768}


def checkpoint_path() -> Path:
    return OUT_DIR / f"{CHECKPOINT_VERSION}-seed{WEIGHT_SEED}.safetensors"


def config_dir() -> Path:
    return OUT_DIR / f"{CHECKPOINT_VERSION}-config"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- child: building


def _random_state_dict(module: Any, generator: Any) -> dict[str, Any]:
    """Deterministic small random weights for a module built on the meta device, stored as fp16.

    Norm layers get weight 1 and bias 0, every other bias 0, every other weight N(0, WEIGHT_STD²):
    activations stay O(1) through the whole network, so all outputs are finite.
    """
    import torch

    norms = set()
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.GroupNorm | torch.nn.LayerNorm):
            norms.update({f"{name}.weight", f"{name}.bias"})
    out = {}
    for key, meta in module.state_dict().items():
        if not meta.is_floating_point():
            out[key] = torch.arange(meta.shape[-1], dtype=meta.dtype).expand(meta.shape).clone()
        elif key in norms:
            out[key] = (torch.ones if key.endswith(".weight") else torch.zeros)(
                meta.shape, dtype=torch.float16
            )
        elif key.endswith(".bias"):
            out[key] = torch.zeros(meta.shape, dtype=torch.float16)
        else:
            weight = torch.randn(meta.shape, generator=generator, dtype=torch.float32)
            out[key] = weight.mul_(WEIGHT_STD).to(torch.float16)
    return out


def _write_config_folder(folder: Path, unet: Any, vae: Any, text_encoder: Any) -> None:
    """What `from_single_file(config=folder)` needs offline: configs and tokenizer files, no weights."""
    from importlib import resources

    import diffusers
    import transformers

    from sfumato.models.loader import TOKENIZER_PACKAGE

    folder.mkdir(parents=True, exist_ok=True)
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    unet.save_config(folder / "unet")
    vae.save_config(folder / "vae")
    text_encoder.config.save_pretrained(folder / "text_encoder")
    diffusers.EulerAncestralDiscreteScheduler.from_config(SCHEDULER_CONFIG).save_config(folder / "scheduler")
    tokenizer = folder / "tokenizer"
    tokenizer.mkdir(exist_ok=True)
    source = resources.files(TOKENIZER_PACKAGE) / "clip_tokenizer"
    for name in ("vocab.json", "merges.txt"):
        (tokenizer / name).write_bytes(source.joinpath(name).read_bytes())
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True}
    (tokenizer / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    log(f"wrote config folder {folder} (transformers {transformers.__version__})")


def role_build() -> dict[str, Any]:
    """Write the checkpoint and the config folder (whichever is missing)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sfumato.models.ldm_export import pipeline_to_single_file, save_single_file

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    with init_empty_weights():
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG))
    if not (config_dir() / "model_index.json").is_file():
        _write_config_folder(config_dir(), unet, vae, text_encoder)
    path = checkpoint_path()
    if not path.is_file():
        log(f"building random weights ({CHECKPOINT_VERSION}, seed {WEIGHT_SEED}, std {WEIGHT_STD})")
        generator = torch.Generator("cpu").manual_seed(WEIGHT_SEED)
        parts = {
            name: _random_state_dict(m, generator)
            for name, m in (("unet", unet), ("vae", vae), ("te", text_encoder))
        }
        params = sum(t.numel() for sd in parts.values() for t in sd.values())
        sd = pipeline_to_single_file(
            family="sd1",
            unet=parts["unet"],
            vae=parts["vae"],
            text_encoder=parts["te"],
            unet_config=unet.config,
        )
        del parts
        log(f"{params / 1e9:.3f} B parameters; writing {path}")
        save_single_file(
            sd,
            path,
            dtype=torch.float16,
            metadata={
                "sfumato.benchmark": CHECKPOINT_VERSION,
                "seed": str(WEIGHT_SEED),
                "std": str(WEIGHT_STD),
            },
        )
    return {"build_s": time.perf_counter() - start, "path": str(path), "bytes": path.stat().st_size}


# ------------------------------------------------------------------------------- child: measuring


def _cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, busy CPU-seconds of the whole machine, CPU-seconds of this process) for `_other_load`."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields]
    busy = sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    own = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def _other_load(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
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
        self._snapshot = _cpu_snapshot()
        self._start = time.perf_counter()

    def _post(self, module: Any, args: Any, output: Any) -> None:
        import torch

        self.times.append(time.perf_counter() - self._start)
        self.other_load.append(_other_load(self._snapshot, _cpu_snapshot()))
        tensor = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if hasattr(tensor, "last_hidden_state"):
            tensor = tensor.last_hidden_state
        if isinstance(tensor, torch.Tensor) and not bool(torch.isfinite(tensor).all()):
            self.finite = False


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _result(
    load_s: float, image_s: float, probes: dict[str, Probe], step_marks: list[float], other_load: float
) -> dict[str, Any]:
    unet = probes["unet"].times
    return {
        "load_s": load_s,
        "image_s": image_s,
        "unet_step_s": statistics.median(unet),
        "unet_step_min_s": min(unet),
        "unet_steps_s": unet,
        "unet_steps_other_load": probes["unet"].other_load,
        "other_load_cores": other_load,
        # wall time between consecutive step callbacks: UNet call + sampler update + bookkeeping
        "step_interval_s": [b - a for a, b in itertools.pairwise(step_marks)],
        "text_encoder_s": sum(probes["text_encoder"].times),
        "text_encoder_calls": len(probes["text_encoder"].times),
        "vae_decode_s": sum(probes["vae_decoder"].times),
        "peak_rss_gib": _peak_rss_gib(),
        "finite": all(p.finite for p in probes.values()),
    }


def role_ours(steps: int, size: int) -> dict[str, Any]:
    import torch

    from sfumato import runtime
    from sfumato.models.loader import load_single_file
    from sfumato.request import build_request
    from sfumato.tasks.common import RunControl
    from sfumato.tasks.txt2img import generate

    runtime.configure(THREADS)  # what every sfumato process does at start (allocator tuning, threads)
    start = time.perf_counter()
    model = load_single_file(checkpoint_path(), device=torch.device("cpu"), dtype=torch.float32)
    load_s = time.perf_counter() - start
    probes = {
        "unet": Probe(model.unet),
        "text_encoder": Probe(model.text_encoders[0]),
        "vae_decoder": Probe(model.vae.decoder),
    }
    request = build_request(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        sampler_name="Euler a",
        scheduler="Automatic",
        steps=steps,
        cfg_scale=CFG_SCALE,
        seed=SEED,
        width=size,
        height=size,
    )
    marks: list[float] = []
    control = RunControl(on_step=lambda progress: marks.append(time.perf_counter()))
    snapshot = _cpu_snapshot()
    start = time.perf_counter()
    images = generate(model, request, control).images
    image_s = time.perf_counter() - start
    assert len(images) == 1 and images[0].image.size == (size, size)
    out = _result(load_s, image_s, probes, marks, _other_load(snapshot, _cpu_snapshot()))
    out["attention_processor"] = sorted({type(p).__name__ for p in model.unet.attn_processors.values()})
    return out


def role_diffusers(steps: int, size: int) -> dict[str, Any]:
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_single_file(
        str(checkpoint_path()),
        config=str(config_dir()),
        torch_dtype=torch.float32,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    load_s = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    probes = {
        "unet": Probe(pipe.unet),
        "text_encoder": Probe(pipe.text_encoder),
        "vae_decoder": Probe(pipe.vae.decoder),
    }
    marks: list[float] = []

    def on_step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        marks.append(time.perf_counter())
        return kwargs

    generator = torch.Generator("cpu").manual_seed(SEED)
    snapshot = _cpu_snapshot()
    start = time.perf_counter()
    images = pipe(
        PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        num_inference_steps=steps,
        guidance_scale=CFG_SCALE,
        width=size,
        height=size,
        generator=generator,
        output_type="pil",
        callback_on_step_end=on_step_end,
    ).images
    image_s = time.perf_counter() - start
    assert len(images) == 1 and images[0].size == (size, size)
    out = _result(load_s, image_s, probes, marks, _other_load(snapshot, _cpu_snapshot()))
    out["attention_processor"] = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    out["scheduler_config"] = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    return out


# ------------------------------------------------------------------------------------------- parent


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(THREADS)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_child(role: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--role", role]
    command += ["--steps", str(args.steps), "--size", str(args.size)]
    log(f"running {role}")
    started = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=_child_env(), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{role} child failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"{role} done in {time.perf_counter() - started:.1f} s: {json.dumps(_headline(result))}")
    return result


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("load_s", "image_s", "unet_step_s", "peak_rss_gib")
    return {k: round(result[k], 3) for k in keys if k in result}


def _warm_page_cache(path: Path) -> float:
    """Read the checkpoint once so both sides load it from the page cache (plain reads: no RSS here)."""
    start = time.perf_counter()
    with path.open("rb") as f:
        while f.read(64 << 20):
            pass
    return time.perf_counter() - start


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    info["cpus"] = os.cpu_count()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")
        )
        flags = next(line for line in cpuinfo.splitlines() if line.startswith("flags")).split()
        info["avx2"], info["avx512f"] = "avx2" in flags, "avx512f" in flags
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_gib"] = round(int(mem) / 1024**2, 1)
        info["loadavg_at_start"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return info


def _versions() -> dict[str, str]:
    code = "import torch, diffusers, transformers, json; print(json.dumps({'torch': torch.__version__, 'diffusers': diffusers.__version__, 'transformers': transformers.__version__}))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_child_env(), check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    side: dict[str, Any] = {}
    for key in (
        "load_s",
        "image_s",
        "unet_step_s",
        "unet_step_min_s",
        "peak_rss_gib",
        "text_encoder_s",
        "vae_decode_s",
        "other_load_cores",
    ):
        side[key] = round(statistics.median(r[key] for r in runs), 4)
    side["step_interval_s"] = (
        round(statistics.median(x for r in runs for x in r["step_interval_s"]), 4)
        if any(r["step_interval_s"] for r in runs)
        else None
    )
    side["finite"] = all(r["finite"] for r in runs)
    side["attention_processor"] = runs[0]["attention_processor"]
    side["runs"] = [
        {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in r.items()
            if k not in ("attention_processor", "scheduler_config")
        }
        for r in runs
    ]
    for r in side["runs"]:
        for key in ("unet_steps_s", "step_interval_s", "unet_steps_other_load"):
            r[key] = [round(x, 3) for x in r[key]]
    return side


def parent(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "sd15_txt2img"}
    if not checkpoint_path().is_file() or not (config_dir() / "model_index.json").is_file():
        report["build"] = run_child("build", args)
    else:
        log(f"using cached {checkpoint_path()}")
    warm_s = _warm_page_cache(checkpoint_path())
    order = []
    for repeat in range(args.repeats):  # ABBA: ours first on even repeats, diffusers first on odd ones
        order += ["ours", "diffusers"] if repeat % 2 == 0 else ["diffusers", "ours"]
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "diffusers": []}
    for role in order:
        runs[role].append(run_child(role, args))
    ours, theirs = _median_side(runs["ours"]), _median_side(runs["diffusers"])
    report["config"] = {
        "checkpoint": checkpoint_path().name,
        "checkpoint_bytes": checkpoint_path().stat().st_size,
        "checkpoint_dtype": "float16 (single file, LDM layout)",
        "weights": f"random N(0, {WEIGHT_STD}^2), norms 1/0, biases 0, seed {WEIGHT_SEED}",
        "compute_dtype": "float32",
        "device": "cpu",
        "steps": args.steps,
        "width": args.size,
        "height": args.size,
        "sampler": "Euler a",
        "schedule": "Automatic",
        "cfg_scale": CFG_SCALE,
        "seed": SEED,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE_PROMPT,
        "threads": THREADS,
        "repeats": args.repeats,
        "order": order,
        "statistic": "median over repeats (unet_step_s: median over the UNet calls of a run first; "
        "unet_step_min_s: fastest call, the least disturbed by other load)",
        "other_load_cores": "cores other processes kept busy meanwhile (from /proc/stat); > 0.3 means "
        "the timing is contended",
        "page_cache": f"checkpoint read once before the runs ({warm_s:.1f} s); both sides load it warm",
        "diffusers_scheduler": runs["diffusers"][0]["scheduler_config"],
        "versions": _versions(),
        "machine": _machine(),
    }
    report["ours"] = ours
    report["diffusers"] = theirs
    report["ratio_ours_over_diffusers"] = {
        key: round(ours[key] / theirs[key], 4) if theirs[key] else None
        for key in ("load_s", "image_s", "unet_step_s", "unet_step_min_s", "peak_rss_gib")
    }
    report["ours_not_slower"] = report["ratio_ours_over_diffusers"]["image_s"] <= 1.0
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=20, help="sampling steps (default 20; 1-3 for short runs)"
    )
    parser.add_argument(
        "--size", type=int, default=512, help="width = height in pixels, multiple of 8 (default 512)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per side; medians reported")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.add_argument(
        "--role", choices=("parent", "build", "ours", "diffusers"), default="parent", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.size < 64 or args.size % 8 or args.repeats < 1:
        parser.error("--steps >= 1, --size a multiple of 8 >= 64, --repeats >= 1")
    if args.role == "build":
        result = role_build()
    elif args.role == "ours":
        result = role_ours(args.steps, args.size)
    elif args.role == "diffusers":
        result = role_diffusers(args.steps, args.size)
    else:
        result = parent(args)
        text = json.dumps(result, indent=2)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        print(text)
        return
    print(json.dumps(result))


if __name__ == "__main__":
    main()
