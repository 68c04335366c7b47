"""Hires fix: txt2img's second pass, as A1111 runs it.

The first pass's latents are upscaled, either in latent space ("Latent" and its interpolation
variants) or as pictures (decode, an image upscaler such as Lanczos, encode), then re-noised and
sampled again at the larger size with the hires steps, denoising strength, sampler and prompt.

A1111 runs the second pass with "exact steps": asked for N steps at strength s, it builds a schedule
of int(N / s) steps and runs its last N, so the hires pass takes exactly the steps the user set (the
opposite of img2img, which runs about s·N of N).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sfumato.errors import UserError, unknown_name
from sfumato.models.loader import LoadedModel
from sfumato.prompts.plan import ConditioningPlan
from sfumato.request import GenerationRequest
from sfumato.sampling.discrete import DiscreteSchedule
from sfumato.sampling.samplers import get_sampler, split_sampler_name
from sfumato.sampling.schedules import get_schedule, img2img_sigmas, make_sigmas
from sfumato.tasks.common import RunControl, decode_latents, encode_pixels, image_to_pixels
from sfumato.tasks.extras import FILTERS, ResizeTarget, upscale, upscaler_names
from sfumato.tasks.image_conditioning import image_guidance
from sfumato.tasks.sampling_run import LatentStart, sample_latents
from sfumato.upscalers.models import ImageModels

# name -> (torch interpolation mode, antialias): A1111's latent upscale modes
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
SAME = ("", "Use same sampler", "Use same scheduler")


def hires_upscaler_names(models: ImageModels | None = None) -> list[str]:
    """A1111's list: the latent modes, then the image upscalers (filters and model files)."""
    return [*LATENT_UPSCALERS, *(name for name in upscaler_names(models) if name != "None")]


@dataclass(frozen=True)
class HiresPlan:
    """What the second pass does, resolved and checked once before any sampling."""

    width: int  # the size sampled at (a multiple of the VAE factor)
    height: int
    crop: tuple[int, int]  # latents cut off (x, y) after sampling when resizing to a set aspect
    steps: int
    sampler: str
    schedule: str
    prompt: str
    negative_prompt: str
    models: ImageModels | None = field(default=None, compare=False)  # model upscalers, by name

    def params(self, request: GenerationRequest) -> dict[str, object]:
        """The infotext keys A1111 writes for the pass."""
        resize = request.hr_resize_x or request.hr_resize_y
        return {
            "Denoising strength": request.denoising_strength,
            "Hires upscale": None if resize else _number(request.hr_scale),
            "Hires resize": f"{request.hr_resize_x}x{request.hr_resize_y}" if resize else None,
            "Hires steps": request.hr_second_pass_steps or None,
            "Hires upscaler": request.hr_upscaler,
            "Hires sampler": request.hr_sampler_name
            if request.hr_sampler_name not in (None, *SAME)
            else None,
            "Hires schedule type": request.hr_scheduler
            if request.hr_scheduler not in (None, *SAME)
            else None,
            "Hires prompt": request.hr_prompt or None,
            "Hires negative prompt": request.hr_negative_prompt or None,
        }


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def plan_hires(
    request: GenerationRequest,
    size: tuple[int, int],
    factor: int,
    sampler: str,
    schedule: str,
    models: ImageModels | None = None,
) -> HiresPlan:
    """Target size by A1111's rules: `hr_scale` times the first pass, or `hr_resize_x/y` (one of them:
    keep the aspect; both: cover that size and crop the overflow)."""
    name = request.hr_upscaler
    if name not in LATENT_UPSCALERS and name not in FILTERS and (models is None or models.find(name) is None):
        raise unknown_name("hires upscaler", name, hires_upscaler_names(models), field="hr_upscaler")
    width, height = size
    rx, ry = request.hr_resize_x, request.hr_resize_y
    crop = (0, 0)
    if not rx and not ry:
        target = (int(width * request.hr_scale), int(height * request.hr_scale))
    elif not ry:
        target = (rx, rx * height // width)
    elif not rx:
        target = (ry * width // height, ry)
    elif width / height < rx / ry:
        target = (rx, rx * height // width)
        crop = (0, (target[1] - ry) // factor)
    else:
        target = (ry * width // height, ry)
        crop = ((target[0] - rx) // factor, 0)
    target = (target[0] // factor * factor, target[1] // factor * factor)
    if min(target) < factor:
        raise UserError("hires fix: the target size is too small", field="hr_scale")
    sampler_name, schedule_name = sampler, schedule
    if request.hr_sampler_name not in (None, *SAME):
        name, combined = split_sampler_name(request.hr_sampler_name)  # type: ignore[arg-type]
        sampler_name, schedule_name = get_sampler(name).name, combined or schedule
    if request.hr_scheduler not in (None, *SAME):
        schedule_name = get_schedule(request.hr_scheduler).label  # type: ignore[arg-type]
    return HiresPlan(
        *target,
        crop,
        request.hr_second_pass_steps or request.steps,
        sampler_name,
        schedule_name,
        request.hr_prompt or request.prompt,
        request.hr_negative_prompt or request.negative_prompt,
        models,
    )


def upscale_latents(
    model: LoadedModel,
    latents: torch.Tensor,
    upscaler: str,
    width: int,
    height: int,
    models: ImageModels | None = None,
    decode_method: str = "Full",
) -> torch.Tensor:
    """The first pass's latents at the hires size, by a latent mode or through pixels (decoded by
    `decode_method`, A1111's `sd_vae_decode_method`, as A1111 does)."""
    factor = model.vae_scale_factor
    if upscaler in LATENT_UPSCALERS:
        mode, antialias = LATENT_UPSCALERS[upscaler]
        return F.interpolate(
            latents, size=(height // factor, width // factor), mode=mode, antialias=antialias
        )
    target = ResizeTarget(width=width, height=height, crop=False)
    images = [
        upscale(image, target, upscaler_1=upscaler, models=models)
        for image in decode_latents(model, latents, decode_method)
    ]
    return encode_pixels(model, torch.cat([image_to_pixels(image) for image in images]))


def hires_pass(
    model: LoadedModel,
    request: GenerationRequest,
    plan: HiresPlan,
    encoder: object,
    latents: torch.Tensor,
    seeds: list[int],
    subseeds: list[int],
    control: RunControl,
    first_index: int,
) -> tuple[torch.Tensor, bool]:
    """The second pass over one batch's first-pass latents; returns (latents, interrupted)."""
    factor = model.vae_scale_factor
    upscaled = upscale_latents(
        model,
        latents,
        request.hr_upscaler,
        plan.width,
        plan.height,
        plan.models,
        request.sd_vae_decode_method,
    )
    shape = (model.latent_channels, plan.height // factor, plan.width // factor)
    if request.denoising_strength == 0:
        return _cropped(upscaled, plan.crop), False
    strength = min(request.denoising_strength, 0.999)
    total = max(int(plan.steps / strength), plan.steps)
    schedule = DiscreteSchedule(model.alphas_cumprod)
    full = make_sigmas(plan.schedule, total, schedule, sampler=plan.sampler, family=model.family)
    sigmas, noise_sigma = img2img_sigmas(full, total, strength, plan.sampler, schedule, t_enc=plan.steps - 1)
    conditioning = ConditioningPlan.build(
        encoder,
        plan.prompt,
        plan.negative_prompt,
        plan.steps,
        len(seeds),  # type: ignore[arg-type]
    )
    conditioning.encode_all()
    out, interrupted = sample_latents(
        model,
        request,
        get_sampler(plan.sampler),
        sigmas,
        conditioning,
        shape,
        seeds,
        subseeds,
        control,
        first_index,
        start=LatentStart(upscaled, noise_sigma),
        image=image_guidance(model, shape[1:], len(seeds)),
        hires=True,
    )
    return _cropped(out, plan.crop), interrupted


def _cropped(latents: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """A1111's truncation after resizing to a set aspect: the overflow cut evenly from both sides."""
    x, y = crop
    height, width = latents.shape[2], latents.shape[3]
    return latents[:, :, y // 2 : height - (y + 1) // 2, x // 2 : width - (x + 1) // 2]
