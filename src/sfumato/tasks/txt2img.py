"""Text to image: conditioning, noise, the sampler loop over the denoiser stack, and decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from sfumato.errors import InterruptedByUser, UserError
from sfumato.models.loader import LoadedModel
from sfumato.prompts.encode import Conditioning, encode_prompt
from sfumato.request import GenerationRequest
from sfumato.sampling.denoiser import GuidedDenoiser, ModelDenoiser, UNetExtras
from sfumato.sampling.discrete import DiscreteSchedule
from sfumato.sampling.noise import ImageRNG
from sfumato.sampling.samplers import StepInfo, get_sampler, split_sampler_name
from sfumato.sampling.schedules import make_sigmas
from sfumato.tasks.common import Progress, RunControl, decode_latents, resolve_seed, stop_check


@dataclass
class GeneratedImage:
    """One image of a job, with the seeds that made it (infotext and saving happen in the caller)."""

    image: Image.Image
    seed: int
    subseed: int
    index: int
    interrupted: bool = False


def resolve_sampler(request: GenerationRequest) -> tuple[str, str]:
    """Sampler and schedule names, accepting A1111's old combined names ("DPM++ 2M Karras")."""
    sampler, schedule = split_sampler_name(request.sampler_name)
    spec = get_sampler(sampler)
    if schedule and request.scheduler not in ("Automatic", schedule):
        raise UserError(
            f"sampler_name {request.sampler_name!r} names schedule {schedule!r}, but scheduler is "
            f"{request.scheduler!r}",
            field="scheduler",
        )
    return spec.name, schedule or request.scheduler


def sdxl_time_ids(width: int, height: int, batch: int) -> torch.Tensor:
    """SDXL's micro-conditioning: original size (h, w), crop top-left (0, 0), target size (h, w)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(batch, 1)


class ConditioningCache:
    """Each distinct text is encoded once per job, however many images and steps use it."""

    def __init__(self, model: LoadedModel, clip_skip: int) -> None:
        self.model = model
        self.clip_skip = clip_skip
        self._cache: dict[str, Conditioning] = {}

    def __call__(self, text: str) -> Conditioning:
        if text not in self._cache:
            self._cache[text] = encode_prompt(self.model, text, self.clip_skip)
        return self._cache[text]


def generate(model: LoadedModel, request: GenerationRequest, control: RunControl | None = None) -> list[GeneratedImage]:
    """Run a txt2img request: `n_iter` batches of `batch_size` images, seeds counting up from `seed`."""
    control = control or RunControl()
    sampler_name, schedule_name = resolve_sampler(request)
    sampler = get_sampler(sampler_name)
    width = request.width or model.native_size
    height = request.height or model.native_size
    factor = model.vae_scale_factor
    if width % factor or height % factor:
        raise UserError(f"width and height must be multiples of {factor} for this model", field="width")
    seed = resolve_seed(request.seed)
    subseed = resolve_seed(request.subseed)
    schedule = DiscreteSchedule(model.alphas_cumprod)
    sigmas = make_sigmas(schedule_name, request.steps, schedule, sampler=sampler_name, family=model.family)
    encode = ConditioningCache(model, request.clip_skip)
    negative, positive = encode(request.negative_prompt), encode(request.prompt)
    shape = (model.latent_channels, height // factor, width // factor)
    results: list[GeneratedImage] = []
    for batch_index in range(request.n_iter):
        first = batch_index * request.batch_size
        seeds = [seed + first + i for i in range(request.batch_size)]
        subseeds = [subseed + first + i for i in range(request.batch_size)]
        latents, interrupted = _sample_batch(
            model, request, sampler, sigmas, schedule, (negative, positive), shape, seeds, subseeds, control, first
        )
        for offset, image in enumerate(decode_latents(model, latents)):
            results.append(GeneratedImage(image, seeds[offset], subseeds[offset], first + offset, interrupted))
        if interrupted:
            break
    return results


def _sample_batch(
    model: LoadedModel,
    request: GenerationRequest,
    sampler,
    sigmas: torch.Tensor,
    schedule: DiscreteSchedule,
    conds: tuple[Conditioning, Conditioning],
    shape: tuple[int, int, int],
    seeds: list[int],
    subseeds: list[int],
    control: RunControl,
    first_index: int,
) -> tuple[torch.Tensor, bool]:
    batch = len(seeds)
    rng = ImageRNG(
        (batch, *shape),
        seeds,
        subseeds=subseeds,
        subseed_strength=request.subseed_strength,
        seed_resize_from_h=request.seed_resize_from_h,
        seed_resize_from_w=request.seed_resize_from_w,
    )
    device = model.device
    x = rng.first().to(device, torch.float32) * sigmas[0].to(device)
    negative, positive = (Conditioning.batch([c] * batch) for c in conds)
    time_ids = sdxl_time_ids(shape[2] * model.vae_scale_factor, shape[1] * model.vae_scale_factor, batch)
    extras = UNetExtras(time_ids.to(device) if model.family == "sdxl" else None)
    denoiser = GuidedDenoiser(
        ModelDenoiser(model.unet, schedule, model.prediction),
        sigmas,
        lambda step: (negative, positive),
        request.cfg_scale,
        extras,
    )
    last = {"denoised": x}

    def on_step(info: StepInfo) -> None:
        last["denoised"] = info.denoised
        if control.on_step:
            control.on_step(Progress(info.step + 1, info.total, first_index, info.denoised))
        stop_check(control)

    noise = sampler.make_noise(rng, x, sigmas, seeds)
    try:
        with torch.no_grad():
            out = sampler.fn(denoiser, x, sigmas.to(device), noise=noise, callback=on_step, **sampler.options(request.eta))
    except InterruptedByUser:
        return last["denoised"], True
    return out, False
