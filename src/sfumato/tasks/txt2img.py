"""Text to image: conditioning, noise, the sampler loop over the denoiser stack, and decoding."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from sfumato.errors import UserError
from sfumato.models.loader import LoadedModel
from sfumato.prompts.encode import EmbeddingLookup, PromptEncoder
from sfumato.prompts.plan import ConditioningPlan
from sfumato.request import GenerationRequest
from sfumato.sampling.discrete import DiscreteSchedule
from sfumato.sampling.samplers import SamplerInfo, get_sampler, split_sampler_name
from sfumato.sampling.schedules import get_schedule, make_sigmas
from sfumato.tasks.common import RunControl, decode_latents, resolve_seed
from sfumato.tasks.hires import hires_pass, plan_hires
from sfumato.tasks.image_conditioning import image_guidance
from sfumato.tasks.sampling_run import sample_latents
from sfumato.upscalers.models import ImageModels


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
    params: dict[str, object] = field(default_factory=dict)  # task-specific infotext keys (img2img's)
    size: tuple[int, int] | None = None  # the infotext's "Size" when not the images' (img2img)


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


@dataclass
class JobContext:
    """What every batch of a generation job shares: the sampler and its sigmas, the encoded prompts,
    the latent shape and the first seeds. Built once by `prepare_job`."""

    request: GenerationRequest
    sampler: SamplerInfo
    sigmas: torch.Tensor
    plan: ConditioningPlan
    shape: tuple[int, int, int]
    seed: int
    subseed: int
    result: Txt2ImgResult

    def batches(self) -> Iterator[tuple[int, list[int], list[int]]]:
        """(index of the batch's first image, its seeds, its variation seeds) for each batch."""
        size = self.request.batch_size
        for batch_index in range(self.request.n_iter):
            first = batch_index * size
            yield (
                first,
                [self.seed + first + i for i in range(size)],
                [self.subseed + first + i for i in range(size)],
            )

    def emit(
        self,
        control: RunControl,
        images: list[Image.Image],
        first: int,
        seeds: list[int],
        subseeds: list[int],
        interrupted: bool,
    ) -> None:
        """Record a batch's images and hand each to `control.on_image` at once (a later failure then
        loses nothing already made)."""
        for offset, image in enumerate(images):
            generated = GeneratedImage(image, seeds[offset], subseeds[offset], first + offset, interrupted)
            self.result.images.append(generated)
            if control.on_image:
                control.on_image(generated, self.result)


def prepare_job(
    model: LoadedModel,
    request: GenerationRequest,
    size: tuple[int, int],
    embedding_lookup: Callable[[object], EmbeddingLookup] | None = None,
) -> JobContext:
    """Check the size, resolve seeds and sampler, build the sigmas and encode every prompt once."""
    sampler_name, schedule_name = resolve_sampler(request)
    width, height = size
    factor = model.vae_scale_factor
    if width % factor or height % factor:
        raise UserError(f"width and height must be multiples of {factor} for this model", field="width")
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
    lora_hashes = plan.activation.hashes_text()
    result = Txt2ImgResult(
        images=[],
        used_embeddings=dict(encoder.used_embeddings),
        notes=plan.activation.notes,
        params={"Lora hashes": lora_hashes} if lora_hashes else {},
    )
    return JobContext(
        request,
        get_sampler(sampler_name),
        sigmas,
        plan,
        (model.latent_channels, height // factor, width // factor),
        resolve_seed(request.seed),
        resolve_seed(request.subseed),
        result,
    )


def generate(
    model: LoadedModel,
    request: GenerationRequest,
    control: RunControl | None = None,
    *,
    embedding_lookup: Callable[[object], EmbeddingLookup] | None = None,
    upscalers: ImageModels | None = None,
) -> Txt2ImgResult:
    """Run a txt2img request: `n_iter` batches of `batch_size` images, seeds counting up from `seed`.

    `embedding_lookup(tokenizer)` finds textual-inversion embeddings in tokenized prompts. Inpainting
    and pix2pix checkpoints get their "nothing to keep" image conditioning, as in A1111. With
    `enable_hr` each batch gets the hires fix's second pass (`tasks.hires`), whose image upscaler may be
    one of the `upscalers` model files."""
    control = control or RunControl()
    size = (request.width or model.native_size[0], request.height or model.native_size[1])
    job = prepare_job(model, request, size, embedding_lookup)
    hires = None
    if request.enable_hr:
        hires = plan_hires(
            request, size, model.vae_scale_factor, job.sampler.name, resolve_sampler(request)[1], upscalers
        )
        hires_params = {k: v for k, v in hires.params(request).items() if v is not None}
        job.result.params = {**hires_params, **job.result.params}
        job.result.size = size  # A1111's "Size" is the first pass's
    image = image_guidance(model, job.shape[1:], request.batch_size)
    for first, seeds, subseeds in job.batches():
        latents, interrupted = sample_latents(
            model,
            request,
            job.sampler,
            job.sigmas,
            job.plan,
            job.shape,
            seeds,
            subseeds,
            control,
            first,
            image=image,
        )
        if hires is not None and not interrupted:
            latents, interrupted = hires_pass(
                model, request, hires, job.plan.encoder, latents, seeds, subseeds, control, first
            )
        images = decode_latents(model, latents, request.sd_vae_decode_method)
        job.emit(control, images, first, seeds, subseeds, interrupted)
        if interrupted:
            break
    return job.result
