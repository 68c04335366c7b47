"""One sampling run over the denoiser stack, shared by txt2img, img2img and what builds on them.

`sample_latents` starts from noise (txt2img) or from an image's latents (`LatentStart`, img2img and
inpainting), adds the model's image conditioning (`ImageGuidance`: inpainting and pix2pix models) and
drives the sampler with progress, interruption and skip.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from sfumato.errors import InterruptedByUser, SkippedByUser
from sfumato.models.loader import LoadedModel
from sfumato.prompts.plan import ConditioningPlan
from sfumato.request import GenerationRequest
from sfumato.sampling.deepcache import DeepCache
from sfumato.sampling.denoiser import (
    GuidedDenoiser,
    MaskBlend,
    ModelDenoiser,
    NegativeGuidanceSkip,
    UNetExtras,
)
from sfumato.sampling.discrete import DiscreteSchedule
from sfumato.sampling.noise import BrownianTreeNoiseSampler, ImageRNG, ImageRNGNoiseSampler, NoiseSampler
from sfumato.sampling.samplers import SamplerInfo, StepInfo
from sfumato.sampling.token_merging import merging_ratio, token_merging
from sfumato.tasks.common import Progress, RunControl, stop_check


def sdxl_time_ids(width: int, height: int, batch: int) -> torch.Tensor:
    """SDXL's micro-conditioning: original size (h, w), crop top-left (0, 0), target size (h, w)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(batch, 1)


def compiled_forward(model: LoadedModel, *, exact: bool) -> Callable[..., torch.Tensor] | None:
    """The UNet's compiled forward when the model has one and nothing hooks or patches the UNet for
    this run (`exact`: no token merging or DeepCache; no hypernetwork on); else None (eager)."""
    if model.compiled is None:
        return None
    networks = model.networks
    if networks is None:
        return model.compiled.call_for((), exact=exact)
    # what the UNet's weights are: a text-encoder-only network leaves the compiled graph valid
    unet_weights = tuple((use.path, use.unet) for use in networks.active if use.unet)
    return model.compiled.call_for(unet_weights, exact=exact and not networks.hooks_unet)


def make_noise_sampler(
    sampler: SamplerInfo, rng: ImageRNG, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]
) -> NoiseSampler:
    """Per-step noise as A1111 draws it: a brownian tree per image seed for the SDE samplers, the
    images' own generator streams for everything else."""
    if sampler.brownian:
        positive = sigmas[sigmas > 0]
        return BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seeds)
    return ImageRNGNoiseSampler(rng, device=x.device, dtype=x.dtype)


@dataclass
class LatentStart:
    """Sampling from an image instead of pure noise (img2img): its clean latents, noised to the first
    sigma of the (truncated) schedule, and for inpainting by latent blending the latent mask.

    `noise_sigma` is the level the init is noised to; A1111's timestep samplers (DDIM, PLMS, UniPC)
    noise it one grid level above the first step they run, so it can differ from `sigmas[0]`.
    """

    latents: torch.Tensor
    noise_sigma: float
    noise_multiplier: float = 1.0
    keep: torch.Tensor | None = None  # 1 where the init's latents are kept, 0 where repainted


@dataclass
class ImageGuidance:
    """Image conditioning for the UNet's extra input channels, and pix2pix's image CFG scale."""

    c_concat: torch.Tensor
    image_cfg_scale: float | None = None


def sample_latents(
    model: LoadedModel,
    request: GenerationRequest,
    sampler: SamplerInfo,
    sigmas: torch.Tensor,
    plan: ConditioningPlan,
    shape: tuple[int, int, int],
    seeds: list[int],
    subseeds: list[int],
    control: RunControl,
    first_index: int = 0,
    *,
    start: LatentStart | None = None,
    image: ImageGuidance | None = None,
    hires: bool = False,
) -> tuple[torch.Tensor, bool]:
    """Sample one batch of latents; returns (latents, interrupted). On interruption or skip the latest
    clean prediction is returned, as A1111 does, so the caller still gets an image. `hires`: this is
    txt2img's second pass (it has its own token merging ratio)."""
    batch = len(seeds)
    factor = model.vae_scale_factor
    rng = ImageRNG(
        shape,
        seeds,
        subseeds=subseeds,
        subseed_strength=request.subseed_strength,
        seed_resize_from_h=request.seed_resize_from_h,
        seed_resize_from_w=request.seed_resize_from_w,
        latent_factor=factor,
    )
    device = model.device
    noise = rng.first().to(device, torch.float32)
    if start is None:
        x = noise * sampler.initial_noise_scale(float(sigmas[0]))
    else:
        x = _noised_init(start, noise, float(sigmas[0]), sampler)
    extras = UNetExtras(
        sdxl_time_ids(shape[2] * factor, shape[1] * factor, batch).to(device)
        if model.family == "sdxl"
        else None,
        None if image is None else image.c_concat.to(device),
    )
    interval = request.deepcache_interval
    ratio = merging_ratio(request, hires=hires)
    unet_call = ModelDenoiser(
        model.unet,
        DiscreteSchedule(model.alphas_cumprod),
        model.prediction,
        compiled_forward(model, exact=interval <= 1 and not ratio),
    )
    deep_cache = DeepCache(unet_call, model.unet, interval, sigmas) if interval > 1 else None
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = GuidedDenoiser(
        deep_cache or unet_call,
        sigmas,
        plan.at,
        request.cfg_scale,
        extras,
        pad_with=plan.encoder("") if request.pad_conds else None,
        image_cfg_scale=None if image is None else image.image_cfg_scale,
        skip_negative=NegativeGuidanceSkip(request.s_min_uncond, request.s_min_uncond_all)
        if request.s_min_uncond > 0
        else None,
    )
    blend = None
    if start is not None and start.keep is not None:
        blend = MaskBlend(denoiser, start.latents.to(device), start.keep.to(device))
        denoiser = blend
    last = {"denoised": x if start is None else start.latents.to(device)}

    def on_step(info: StepInfo) -> None:
        last["denoised"] = info.denoised
        if control.on_step:
            control.on_step(Progress(info.step + 1, info.total or 0, first_index, info.denoised))
        stop_check(control)

    options = {} if request.eta is None else {"eta": request.eta}
    interrupted = False
    try:
        with (
            torch.no_grad(),
            token_merging(model.unet, ratio),
            deep_cache or nullcontext(),
        ):
            out = sampler(
                denoiser,
                x,
                sigmas,
                noise=make_noise_sampler(sampler, rng, x, sigmas, seeds),
                callback=on_step,
                **options,
            )
    except InterruptedByUser:
        out, interrupted = last["denoised"], True
    except SkippedByUser:
        out = last["denoised"]
    return (out if blend is None else blend.blend(out)), interrupted


def _noised_init(
    start: LatentStart, noise: torch.Tensor, first_sigma: float, sampler: SamplerInfo
) -> torch.Tensor:
    """The sampler's starting x for img2img: the init latents plus noise at `start.noise_sigma`.

    k-diffusion samplers start at x0 + σ·n with σ the first sigma. A1111's timestep samplers build the
    VP latent √ᾱ·x0 + √(1−ᾱ)·n one grid level up and feed it as the VP latent of the first step, which
    in sigma space is that latent times √(1 + σ_first²).
    """
    device = noise.device
    noise = noise * start.noise_multiplier
    latents = start.latents.to(device, torch.float32)
    if not sampler.own_grid:
        return latents + noise * first_sigma
    sigma = start.noise_sigma
    vp = (latents + noise * sigma) / (1 + sigma**2) ** 0.5
    return vp * (1 + first_sigma**2) ** 0.5
