"""Image to image and inpainting: encode the framed init, noise it to the strength's level, sample
the rest of the schedule, decode and paste back (A1111's StableDiffusionProcessingImg2Img).

Inpainting works on every checkpoint by latent blending (the kept area of each prediction is the
init's), and 9-channel inpainting checkpoints also see the mask and the masked picture; instruct-pix2pix
checkpoints see the init picture and take `image_cfg_scale`. Masked content: "fill" paints the masked
area with its surroundings before encoding, "original" keeps it, "latent noise" replaces its latents
with the seed's noise, "latent nothing" with zeros.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sfumato.imaging.masks import latent_mask
from sfumato.models.loader import LoadedModel
from sfumato.prompts.encode import EmbeddingLookup
from sfumato.request import Img2ImgRequest
from sfumato.sampling.discrete import DiscreteSchedule
from sfumato.sampling.noise import ImageRNG
from sfumato.sampling.schedules import img2img_sigmas
from sfumato.tasks.common import RunControl, decode_latents, encode_pixels
from sfumato.tasks.image_conditioning import image_guidance
from sfumato.tasks.img2img_inputs import Img2ImgInputs, PreparedInit, prepare_init
from sfumato.tasks.sampling_run import LatentStart, sample_latents
from sfumato.tasks.txt2img import Txt2ImgResult, prepare_job


def img2img(
    model: LoadedModel,
    request: Img2ImgRequest,
    inputs: Img2ImgInputs,
    control: RunControl | None = None,
    *,
    embedding_lookup: Callable[[object], EmbeddingLookup] | None = None,
) -> Txt2ImgResult:
    """Run an img2img/inpainting request: `n_iter` batches of `batch_size` images from one init image.
    At denoising strength 0 the framed init comes back unchanged (A1111 would still run one step)."""
    control = control or RunControl()
    prepared = prepare_init(inputs, request, model.vae_scale_factor)
    job = prepare_job(model, request, prepared.image.size, embedding_lookup)
    job.result.notes[:0] = prepared.notes
    job.result.params = {**prepared.params, **job.result.params}
    job.result.size = prepared.image.size
    if model.variant == "pix2pix" and request.image_cfg_scale is not None:
        job.result.params["Image CFG scale"] = request.image_cfg_scale
    if request.denoising_strength == 0:
        for first, seeds, subseeds in job.batches():
            unchanged = [prepared.paste.apply(prepared.image) for _ in seeds]
            job.emit(control, unchanged, first, seeds, subseeds, False)
        return job.result
    sigmas, noise_sigma = img2img_sigmas(
        job.sigmas,
        request.steps,
        request.denoising_strength,
        job.sampler.name,
        DiscreteSchedule(model.alphas_cumprod),
    )
    init = _init_latents(model, prepared, job.shape)
    keep = _keep_mask(prepared, job.shape)
    guidance = image_guidance(
        model,
        job.shape[1:],
        request.batch_size,
        pixels=prepared.pixels(),
        mask=prepared.mask_tensor(),
        mask_weight=request.inpainting_mask_weight,
        image_cfg_scale=request.image_cfg_scale,
    )
    for first, seeds, subseeds in job.batches():
        start = LatentStart(
            _masked_content(init, keep, request.inpainting_fill, job.shape, seeds),
            noise_sigma,
            request.initial_noise_multiplier,
            keep,
        )
        latents, interrupted = sample_latents(
            model,
            request,
            job.sampler,
            sigmas,
            job.plan,
            job.shape,
            seeds,
            subseeds,
            control,
            first,
            start=start,
            image=guidance,
        )
        images = [
            prepared.paste.apply(image)
            for image in decode_latents(model, latents, request.sd_vae_decode_method)
        ]
        job.emit(control, images, first, seeds, subseeds, interrupted)
        if interrupted:
            break
    return job.result


def _init_latents(model: LoadedModel, prepared: PreparedInit, shape: tuple[int, int, int]) -> torch.Tensor:
    """The init's latents at the latent shape; resize mode 3 encodes the init at its own size and
    resizes the latents (bilinear, as A1111)."""
    if not prepared.latent_resize:
        return encode_pixels(model, prepared.pixels())
    factor = model.vae_scale_factor
    source = prepared.encode_image
    assert source is not None
    width = max(factor, source.width // factor * factor)
    height = max(factor, source.height // factor * factor)
    latents = encode_pixels(model, prepared.pixels(source.resize((width, height))))
    return F.interpolate(latents, size=shape[1:], mode="bilinear")


def _keep_mask(prepared: PreparedInit, shape: tuple[int, int, int]) -> torch.Tensor | None:
    """1 where the init's latents stay, 0 where they are repainted (None: no mask)."""
    if prepared.mask is None:
        return None
    repaint = torch.from_numpy(latent_mask(prepared.mask, (shape[2], shape[1])))
    return (1.0 - repaint).expand(1, shape[0], -1, -1).clone()


def _masked_content(
    init: torch.Tensor, keep: torch.Tensor | None, fill: int, shape: tuple[int, int, int], seeds: list[int]
) -> torch.Tensor:
    """The batch's init latents with the masked area replaced for "latent noise" (the seeds' first
    noise draw, as A1111) and "latent nothing" (zeros)."""
    batch = init.repeat(len(seeds), 1, 1, 1)
    if keep is None or fill not in (2, 3):
        return batch
    if fill == 3:
        return batch * keep
    noise = ImageRNG(shape, seeds).first().to(batch)
    return batch * keep + noise * (1 - keep)
