"""Generation scenarios, each measured in a child process for one side: sfumato ("ours") or diffusers.

Scenarios (all "Euler a", CFG 7, seed 1, fp32 compute on the CPU, 2 threads, fixed prompts):

- `txt2img`: SD1.5, size², `steps`;
- `img2img`: SD1.5, a fixed size² init picture, denoising strength 0.5: int(0.5·steps) + 1 steps as
  A1111 runs them (diffusers' strength is raised to (int(0.5·steps) + 1)/steps for the same work);
- `hires`: SD1.5 txt2img at size², then A1111's hires fix with the "Latent" upscaler (bilinear ×2) and
  `hires_steps` second-pass steps at strength 0.5; diffusers: its txt2img pipeline to latents, the
  same bilinear upscale, then its img2img pipeline on those latents;
- `sdxl`: SDXL at size², `steps`.

Per run: `load_s` (single file to a ready model: ours `load_single_file`, diffusers
`from_single_file(config=...)`), `image_s` (the whole job: text encoding, sampling, VAE, PIL image),
each UNet call's time (forward hooks), time in the text encoders and the VAE, peak RSS, the contention
meanwhile, and the number of UNet calls, which must be equal on both sides (same work).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

from checkpoints import MODELS, SDXL
from harness import THREADS, Probe, cpu_snapshot, other_load, peak_rss_gib

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed, sharp focus"
NEGATIVE_PROMPT = "blurry, low quality, watermark"
SEED = 1
CFG_SCALE = 7.0
STRENGTH = 0.5

SCENARIO_MODELS: dict[str, str] = {"txt2img": "sd15", "img2img": "sd15", "hires": "sd15", "sdxl": "sdxl"}

# diffusers' closest match to A1111's "Euler a" + "Automatic" (k-diffusion's uniform schedule:
# timesteps linspace(999, 0, steps), initial noise scaled by sigma_max, 0 appended). diffusers
# interpolates sigmas linearly in t where k-diffusion interpolates log-sigma; the work per step is the same.
EULER_A_CONFIG: dict[str, Any] = {
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


def init_picture(size: int) -> Any:
    """A deterministic img2img source: colour ramps with a few flat shapes."""
    import numpy as np
    from PIL import Image, ImageDraw

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.add.outer(ramp[::-1], ramp) / 2, np.tile(ramp, (size, 1))], -1
    )
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 8, size // 8, size // 2, size // 2), fill=(220, 40, 40))
    draw.rectangle((size // 2, size // 2, size - size // 8, size - size // 8), fill=(30, 60, 200))
    return image


def _summary(
    load_s: float, image_s: float, probes: dict[str, Probe], marks: list[float], load: float
) -> dict[str, Any]:
    unet = probes["unet"].times
    return {
        "load_s": load_s,
        "image_s": image_s,
        "unet_calls": len(unet),
        "unet_step_s": statistics.median(unet),
        "unet_step_min_s": min(unet),
        "unet_steps_s": [round(t, 3) for t in unet],
        "unet_steps_other_load": [round(x, 2) for x in probes["unet"].other_load],
        "other_load_cores": load,
        # wall time between consecutive step callbacks: UNet call + sampler update + bookkeeping
        "step_interval_s": [round(b - a, 3) for a, b in itertools.pairwise(marks)],
        "text_encoder_s": sum(t for name, p in probes.items() if name.startswith("text") for t in p.times),
        "vae_decode_s": sum(probes["vae_decoder"].times),
        "vae_decode_calls": len(probes["vae_decoder"].times),
        "vae_encode_s": sum(probes["vae_encoder"].times),
        "peak_rss_gib": peak_rss_gib(),
        "finite": all(p.finite for p in probes.values()),
    }


def _probes(unet: Any, vae: Any, encoders: list[Any]) -> dict[str, Probe]:
    probes = {"unet": Probe(unet), "vae_decoder": Probe(vae.decoder), "vae_encoder": Probe(vae.encoder)}
    probes |= {f"text_encoder_{i}": Probe(encoder) for i, encoder in enumerate(encoders)}
    return probes


def ours_request(scenario: str, steps: int, size: int, hires_steps: int, fields: dict[str, Any]) -> Any:
    """The sfumato request of a scenario (with extra request fields, e.g. an approximation's)."""
    from sfumato.request import build_img2img_request, build_request

    common: dict[str, Any] = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE_PROMPT,
        "sampler_name": "Euler a",
        "scheduler": "Automatic",
        "steps": steps,
        "cfg_scale": CFG_SCALE,
        "seed": SEED,
        "width": size,
        "height": size,
        **fields,
    }
    if scenario == "img2img":
        return build_img2img_request(**common, denoising_strength=STRENGTH)
    if scenario == "hires":
        hires = {"enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent", "denoising_strength": STRENGTH}
        return build_request(**common, **hires, hr_second_pass_steps=hires_steps)
    return build_request(**common)


def run_ours(model: Any, scenario: str, request: Any, control: Any) -> Any:
    """One job through the same task code the CLI and the server use; returns the PIL image."""
    from sfumato.tasks.img2img import img2img
    from sfumato.tasks.img2img_inputs import Img2ImgInputs
    from sfumato.tasks.txt2img import generate

    if scenario == "img2img":
        result = img2img(model, request, Img2ImgInputs(init_picture(request.width)), control)
    else:
        result = generate(model, request, control)
    (image,) = [g.image for g in result.images]
    return image


def load_ours(scenario: str, low_memory: bool = False) -> tuple[Any, float]:
    import torch

    from sfumato import runtime
    from sfumato.models.loader import load_single_file

    runtime.configure(THREADS)  # what every sfumato process does at start (allocator tuning, threads)
    start = time.perf_counter()
    model = load_single_file(
        MODELS[SCENARIO_MODELS[scenario]].path,
        device=torch.device("cpu"),
        dtype=torch.float32,
        low_memory=low_memory,
    )
    return model, time.perf_counter() - start


def role_ours(
    scenario: str, steps: int, size: int, hires_steps: int, low_memory: bool = False
) -> dict[str, Any]:
    from sfumato.tasks.common import RunControl

    model, load_s = load_ours(scenario, low_memory)
    probes = _probes(model.unet, model.vae, list(model.text_encoders))
    request = ours_request(scenario, steps, size, hires_steps, {})
    marks: list[float] = []
    control = RunControl(on_step=lambda progress: marks.append(time.perf_counter()))
    snapshot = cpu_snapshot()
    start = time.perf_counter()
    image = run_ours(model, scenario, request, control)
    image_s = time.perf_counter() - start
    out = _summary(load_s, image_s, probes, marks, other_load(snapshot, cpu_snapshot()))
    out["image_size"] = list(image.size)
    out["attention_processor"] = sorted({type(p).__name__ for p in model.unet.attn_processors.values()})
    return out


def _diffusers_pipeline(scenario: str) -> tuple[Any, float]:
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(THREADS)
    model = MODELS[SCENARIO_MODELS[scenario]]
    cls = StableDiffusionXLPipeline if model is SDXL else StableDiffusionPipeline
    start = time.perf_counter()
    pipe = cls.from_single_file(
        str(model.path), config=str(model.config_dir), torch_dtype=torch.float32, local_files_only=True
    )
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(EULER_A_CONFIG)
    load_s = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    return pipe, load_s


def role_diffusers(scenario: str, steps: int, size: int, hires_steps: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe, load_s = _diffusers_pipeline(scenario)
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    probes = _probes(pipe.unet, pipe.vae, encoders)
    marks: list[float] = []

    def on_step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        marks.append(time.perf_counter())
        return kwargs

    generator = torch.Generator("cpu").manual_seed(SEED)
    common = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE_PROMPT,
        "guidance_scale": CFG_SCALE,
        "generator": generator,
        "callback_on_step_end": on_step_end,
    }
    snapshot = cpu_snapshot()
    start = time.perf_counter()
    if scenario == "img2img":
        img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
        # A1111 (and ours) runs int(strength·steps) + 1 steps, diffusers int(strength·steps): same work.
        strength = (int(STRENGTH * steps) + 1) / steps
        images = img2img(
            image=init_picture(size), strength=strength, num_inference_steps=steps, **common
        ).images
    elif scenario == "hires":
        latents = pipe(
            num_inference_steps=steps, width=size, height=size, output_type="latent", **common
        ).images
        upscaled = F.interpolate(
            latents, scale_factor=2, mode="bilinear", align_corners=False
        )  # A1111's "Latent"
        img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
        # A1111's hires pass runs exactly `hires_steps` steps of a schedule of hires_steps/strength.
        total = int(hires_steps / STRENGTH)
        images = img2img(image=upscaled, strength=STRENGTH, num_inference_steps=total, **common).images
    else:
        images = pipe(num_inference_steps=steps, width=size, height=size, **common).images
    image_s = time.perf_counter() - start
    out = _summary(load_s, image_s, probes, marks, other_load(snapshot, cpu_snapshot()))
    out["image_size"] = list(images[0].size)
    out["attention_processor"] = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    out["scheduler_config"] = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    return out


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio of two 8-bit images in dB (inf when identical)."""
    import numpy as np

    error = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def _bf16_run(steps: int, size: int, fields: dict[str, Any]) -> tuple[Any, float, int]:
    """The txt2img job on a bf16 copy of the checkpoint (loaded once per process)."""
    import torch

    from sfumato.models.loader import load_single_file
    from sfumato.tasks.common import RunControl

    global _BF16_MODEL
    if _BF16_MODEL is None:
        path = MODELS[SCENARIO_MODELS["txt2img"]].path
        _BF16_MODEL = load_single_file(path, device=torch.device("cpu"), dtype=torch.bfloat16)
        _BF16_MODEL.taesd = _taesd().to(torch.bfloat16)
    probe = Probe(_BF16_MODEL.unet)
    start = time.perf_counter()
    image = run_ours(_BF16_MODEL, "txt2img", ours_request("txt2img", steps, size, 0, fields), RunControl())
    return image, time.perf_counter() - start, len(probe.times)


_BF16_MODEL: Any = None


def _taesd() -> Any:
    from diffusers import AutoencoderTiny

    return AutoencoderTiny().eval()  # TAESD's architecture, random weights: its speed, not its look


def role_approximations(steps: int, size: int, approximations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """txt2img exact, then with each approximation's request fields, in one warm process: seconds per
    image, UNet calls and PSNR against the exact image; exact runs first and last (drift check)."""
    from sfumato.tasks.common import RunControl

    model, load_s = load_ours("txt2img")
    model.taesd = _taesd()
    probe = Probe(model.unet)

    def timed(fields: dict[str, Any]) -> tuple[Any, float, int]:
        calls = len(probe.times)
        start = time.perf_counter()
        image = run_ours(model, "txt2img", ours_request("txt2img", steps, size, 0, fields), RunControl())
        return image, time.perf_counter() - start, len(probe.times) - calls

    exact, exact_s, exact_calls = timed({})
    results: dict[str, Any] = {}
    for name, fields in approximations.items():
        if fields.get("dtype") == "bf16":  # a half-precision load (channels_last by default on CPU)
            image, seconds, calls = _bf16_run(steps, size, {k: v for k, v in fields.items() if k != "dtype"})
        else:
            image, seconds, calls = timed(fields)
        psnr_db = psnr(image, exact)
        results[name] = {
            "fields": fields,
            "image_s": seconds,
            "unet_calls": calls,
            "psnr_db": None if psnr_db == float("inf") else round(psnr_db, 2),
        }
    _, exact_again_s, _ = timed({})
    return {
        "load_s": load_s,
        "exact_image_s": [exact_s, exact_again_s],
        "exact_unet_calls": exact_calls,
        "approximations": results,
        "peak_rss_gib": peak_rss_gib(),
        "finite": probe.finite,
    }


def role_compiled(
    scenario: str, steps: int, size: int, hires_steps: int, cache_dir: str, images: int, eager_first: bool
) -> dict[str, Any]:
    """txt2img or hires fix (two latent shapes: two compiles) as `sfumato serve --compile` runs it: the UNet through torch.compile with freezing. The
    first compiled image pays the compile; later ones are a warm server's per-image time. With
    `eager_first`, one eager image first: the same process's exact reference (time and PSNR).
    `cache_dir`: inductor's cache (a cold compile when empty, a cached one when a run filled it).
    UNet calls are timed by step callbacks: hooks on the UNet would break its graph."""
    from sfumato.models.compiled_unet import CompiledUNet
    from sfumato.tasks.common import RunControl

    model, load_s = load_ours(scenario)
    request = ours_request(scenario, steps, size, hires_steps, {})

    def timed() -> tuple[Any, dict[str, Any]]:
        marks: list[float] = []
        control = RunControl(on_step=lambda progress: marks.append(time.perf_counter()))
        start = time.perf_counter()
        image = run_ours(model, scenario, request, control)
        intervals = [b - a for a, b in itertools.pairwise(marks)]
        return image, {
            "image_s": time.perf_counter() - start,
            "step_interval_s": [round(t, 3) for t in intervals],
        }

    out: dict[str, Any] = {"load_s": load_s}
    eager_image = None
    if eager_first:
        eager_image, out["eager"] = timed()
    model.compiled = CompiledUNet(model.unet, Path(cache_dir))  # NCHW, as the server on this CPU
    runs = [timed() for _ in range(images)]
    out["compile_s"] = model.compiled.compile_seconds
    out["first_image_s"] = runs[0][1]["image_s"]
    out["runs"] = [run for _, run in runs]
    if len(runs) > 1:
        out["warm_image_s"] = statistics.median(run["image_s"] for _, run in runs[1:])
        out["warm_step_interval_min_s"] = min(min(run["step_interval_s"]) for _, run in runs[1:])
    if eager_image is not None:
        value = psnr(runs[-1][0], eager_image)
        out["psnr_vs_eager_db"] = None if value == float("inf") else round(value, 2)  # None: identical
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def main(argv: list[str]) -> None:
    role, scenario = argv[0], argv[1]
    steps, size, hires_steps = int(argv[2]), int(argv[3]), int(argv[4])
    if role in ("ours", "ours-low-memory"):
        result = role_ours(scenario, steps, size, hires_steps, low_memory=role == "ours-low-memory")
    elif role == "diffusers":
        result = role_diffusers(scenario, steps, size, hires_steps)
    elif role == "compiled":
        result = role_compiled(
            scenario, steps, size, hires_steps, argv[5], int(argv[6]), argv[7] == "eager-first"
        )
    else:
        result = role_approximations(steps, size, json.loads(argv[5]))
    print(json.dumps(result))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
