"""Text to image: conditioning, noise, the sampler loop over the denoiser stack, and decoding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

from sfumato.errors import InterruptedByUser, SkippedByUser, UserError
from sfumato.models.loader import LoadedModel
from sfumato.prompts.encode import EmbeddingLookup, PromptEncoder
from sfumato.prompts.extra_networks import ExtraNetworkCall
from sfumato.prompts.plan import ConditioningPlan
from sfumato.request import GenerationRequest
from sfumato.sampling.denoiser import GuidedDenoiser, ModelDenoiser, UNetExtras
from sfumato.sampling.discrete import DiscreteSchedule
from sfumato.sampling.noise import BrownianTreeNoiseSampler, ImageRNG, ImageRNGNoiseSampler, NoiseSampler
from sfumato.sampling.samplers import SamplerInfo, StepInfo, get_sampler, split_sampler_name
from sfumato.sampling.schedules import get_schedule, make_sigmas
from sfumato.tasks.common import Progress, RunControl, decode_latents, resolve_seed, stop_check


@dataclass
class GeneratedImage:
    """One image of a job, with the seeds that made it (infotext and saving happen in the caller)."""

    image: Image.Image
    seed: int
    subseed: int
    index: int
    interrupted: bool = False


@dataclass
class Txt2ImgResult:
    """The images of a job and what the infotext and the user should hear about how they were made."""

    images: list[GeneratedImage]
    used_embeddings: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def resolve_sampler(request: GenerationRequest) -> tuple[str, str]:
    """Canonical sampler name and schedule label, accepting A1111's old combined names ("DPM++ 2M
    Karras") and any case; raises UserError for unknown names or a combined name that contradicts
    the scheduler field."""
    sampler, combined_schedule = split_sampler_name(request.sampler_name)
    schedule = get_schedule(request.scheduler).label
    if combined_schedule and schedule not in ("Automatic", combined_schedule):
        raise UserError(
            f"sampler_name {request.sampler_name!r} names schedule {combined_schedule!r}, but scheduler is "
            f"{request.scheduler!r}",
            field="scheduler",
        )
    return get_sampler(sampler).name, combined_schedule or schedule


def sdxl_time_ids(width: int, height: int, batch: int) -> torch.Tensor:
    """SDXL's micro-conditioning: original size (h, w), crop top-left (0, 0), target size (h, w)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(batch, 1)


def generate(
    model: LoadedModel,
    request: GenerationRequest,
    control: RunControl | None = None,
    *,
    embedding_lookup: Callable[[object], EmbeddingLookup] | None = None,
) -> Txt2ImgResult:
    """Run a txt2img request: `n_iter` batches of `batch_size` images, seeds counting up from `seed`.

    `embedding_lookup(tokenizer)` finds textual-inversion embeddings in tokenized prompts."""
    control = control or RunControl()
    sampler_name, schedule_name = resolve_sampler(request)
    sampler = get_sampler(sampler_name)
    width = request.width or model.native_size[0]
    height = request.height or model.native_size[1]
    factor = model.vae_scale_factor
    if width % factor or height % factor:
        raise UserError(f"width and height must be multiples of {factor} for this model", field="width")
    seed = resolve_seed(request.seed)
    subseed = resolve_seed(request.subseed)
    sigmas = make_sigmas(
        schedule_name,
        request.steps,
        DiscreteSchedule(model.alphas_cumprod),
        sampler=sampler_name,
        family=model.family,
    )
    encoder = PromptEncoder(
        model, clip_skip=request.clip_skip, emphasis=request.emphasis, lookup_for=embedding_lookup
    )
    plan = ConditioningPlan.build(
        encoder, request.prompt, request.negative_prompt, request.steps, request.batch_size
    )
    plan.encode_all()
    shape = (model.latent_channels, height // factor, width // factor)
    result = Txt2ImgResult(
        images=[], used_embeddings=dict(encoder.used_embeddings), notes=_notes(plan.extra_networks)
    )
    for batch_index in range(request.n_iter):
        first = batch_index * request.batch_size
        seeds = [seed + first + i for i in range(request.batch_size)]
        subseeds = [subseed + first + i for i in range(request.batch_size)]
        latents, interrupted = sample_latents(
            model, request, sampler, sigmas, plan, shape, seeds, subseeds, control, first
        )
        for offset, image in enumerate(decode_latents(model, latents)):
            generated = GeneratedImage(image, seeds[offset], subseeds[offset], first + offset, interrupted)
            result.images.append(generated)
            if control.on_image:
                control.on_image(generated, result)  # saved at once: a later failure loses nothing
        if interrupted:
            break
    return result


def _notes(calls: list[ExtraNetworkCall]) -> list[str]:
    """Warnings, never errors: tags naming networks we cannot apply (yet)."""
    return [
        f"<{call.kind}:{call.name}> ignored: {call.kind} networks are not supported yet" for call in calls
    ]


def make_noise_sampler(
    sampler: SamplerInfo, rng: ImageRNG, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]
) -> NoiseSampler:
    """Per-step noise as A1111 draws it: a brownian tree per image seed for the SDE samplers, the
    images' own generator streams for everything else."""
    if sampler.brownian:
        positive = sigmas[sigmas > 0]
        return BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seeds)
    return ImageRNGNoiseSampler(rng, device=x.device, dtype=x.dtype)


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
) -> tuple[torch.Tensor, bool]:
    """Sample one batch of latents; returns (latents, interrupted). On interruption or skip the latest
    clean prediction is returned, as A1111 does, so the caller still gets an image."""
    batch = len(seeds)
    rng = ImageRNG(
        shape,
        seeds,
        subseeds=subseeds,
        subseed_strength=request.subseed_strength,
        seed_resize_from_h=request.seed_resize_from_h,
        seed_resize_from_w=request.seed_resize_from_w,
    )
    device = model.device
    x = rng.first().to(device, torch.float32) * sampler.initial_noise_scale(float(sigmas[0]))
    factor = model.vae_scale_factor
    extras = UNetExtras(
        sdxl_time_ids(shape[2] * factor, shape[1] * factor, batch).to(device)
        if model.family == "sdxl"
        else None
    )
    denoiser = GuidedDenoiser(
        ModelDenoiser(model.unet, DiscreteSchedule(model.alphas_cumprod), model.prediction),
        sigmas,
        plan.at,
        request.cfg_scale,
        extras,
        pad_with=plan.encoder("") if request.pad_conds else None,
    )
    last = {"denoised": x}

    def on_step(info: StepInfo) -> None:
        last["denoised"] = info.denoised
        if control.on_step:
            control.on_step(Progress(info.step + 1, info.total or 0, first_index, info.denoised))
        stop_check(control)

    options = {} if request.eta is None else {"eta": request.eta}
    try:
        with torch.no_grad():
            out = sampler(
                denoiser,
                x,
                sigmas,
                noise=make_noise_sampler(sampler, rng, x, sigmas, seeds),
                callback=on_step,
                **options,
            )
    except InterruptedByUser:
        return last["denoised"], True
    except SkippedByUser:
        return last["denoised"], False
    return out, False
