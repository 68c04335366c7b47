"""img2img, 9-channel inpainting and instruct-pix2pix against diffusers' own pipelines on tiny models.

Same tolerance reasoning as test_txt2img_vs_diffusers (float32 both sides, different operation
orders). diffusers samples the VAE posterior where A1111 and we take its mean for the image latents
that condition the UNet; `posterior_mode` makes diffusers take the mean too, so everything else is
compared exactly. The step rules differ (diffusers' strength 0.8 runs what A1111's 0.75 runs), which
is what makes the comparison a check of our rule, not a copy of theirs.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from PIL import Image

from sfumato.models.loader import load_single_file
from sfumato.prompts.encode import PromptEncoder, encode_prompt
from sfumato.prompts.plan import ConditioningPlan
from sfumato.request import build_img2img_request
from sfumato.sampling import DiscreteSchedule, get_sampler, make_sigmas
from sfumato.sampling.schedules import img2img_sigmas
from sfumato.tasks.common import RunControl, encode_pixels, image_to_pixels
from sfumato.tasks.image_conditioning import image_guidance
from sfumato.tasks.sampling_run import LatentStart, sample_latents

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
PROMPT, NEGATIVE = "a red circle on a white background", "blurry"
SEEDS = [5, 6]
STEPS = 10


def tol(reference: torch.Tensor) -> dict[str, float]:
    return {"rtol": 1e-4, "atol": 2e-5 * float(reference.abs().max())}


@pytest.fixture(scope="module")
def models(tiny_models):
    cpu = torch.device("cpu")
    return {
        name: load_single_file(tiny_models[name][0], device=cpu, dtype=torch.float32)
        for name in ("sd1", "sd1-inpaint", "sd1-pix2pix")
    }


@pytest.fixture
def posterior_mode(monkeypatch):
    """diffusers' pipelines take the posterior mean of the VAE (= its mode), as we do."""
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint as inpaint_module

    def mode(encoder_output, generator=None, sample_mode="sample"):
        return encoder_output.latent_dist.mode()

    monkeypatch.setattr(img2img_module, "retrieve_latents", mode)
    monkeypatch.setattr(inpaint_module, "retrieve_latents", mode)


def picture() -> Image.Image:
    """A smooth 64×64 picture: a gradient with a disc, something a VAE sees as an image."""
    x = torch.linspace(0, 1, 64)
    rgb = torch.stack([x[None, :].expand(64, 64), x[:, None].expand(64, 64), 1 - x[None, :].expand(64, 64)])
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    rgb[:, (yy - 30) ** 2 + (xx - 34) ** 2 < 150] = torch.tensor([0.9, 0.1, 0.1])[:, None]
    return Image.fromarray((rgb.permute(1, 2, 0) * 255).round().byte().numpy())


def square_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def noise() -> torch.Tensor:
    return torch.stack([torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in SEEDS])


def conditioning_kwargs(model) -> dict[str, torch.Tensor]:
    negative, positive = encode_prompt(model, NEGATIVE), encode_prompt(model, PROMPT)
    return {
        "prompt_embeds": positive.cross.repeat(len(SEEDS), 1, 1),
        "negative_prompt_embeds": negative.cross.repeat(len(SEEDS), 1, 1),
    }


def parts(model, kind: str):
    keys = {"vae": model.vae, "text_encoder": model.text_encoders[0], "tokenizer": model.tokenizers[0]}
    keys["unet"] = model.unet
    scheduler = diffusers.EulerDiscreteScheduler(**SD, timestep_spacing="linspace")
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    if kind == "pix2pix":
        extra.pop("requires_safety_checker")
    pipe = getattr(diffusers, kind)(**keys, scheduler=scheduler, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe, scheduler


def ours(model, sigmas, *, start=None, image=None, cfg=7.0):
    request = build_img2img_request(prompt=PROMPT, negative_prompt=NEGATIVE, steps=STEPS, cfg_scale=cfg)
    plan = ConditioningPlan.build(PromptEncoder(model), PROMPT, NEGATIVE, STEPS, len(SEEDS))
    latents, _ = sample_latents(
        model,
        request,
        get_sampler("Euler"),
        sigmas,
        plan,
        (4, 8, 8),
        SEEDS,
        SEEDS,
        RunControl(),
        start=start,
        image=image,
    )
    return latents


def euler_sigmas(model) -> torch.Tensor:
    return make_sigmas("Uniform", STEPS, DiscreteSchedule(model.alphas_cumprod), sampler="Euler")


def test_img2img_follows_a1111_steps_and_matches_diffusers(models, posterior_mode, monkeypatch):
    # A1111 at strength 0.75 over 10 steps: t_enc = 7, runs sigmas[2:] (8 steps) from x0 + σ[2]·n.
    # diffusers at strength 0.8 runs the same 8 steps (int(10·0.8) = 8), from add_noise at σ[2].
    model = models["sd1"]
    full = euler_sigmas(model)
    sigmas, noise_sigma = img2img_sigmas(full, STEPS, 0.75, "Euler", DiscreteSchedule(model.alphas_cumprod))
    assert len(sigmas) - 1 == 8 and noise_sigma == float(full[2])
    init = encode_pixels(model, image_to_pixels(picture())).repeat(len(SEEDS), 1, 1, 1)
    mine = ours(model, sigmas, start=LatentStart(init, noise_sigma))

    pipe, _ = parts(model, "StableDiffusionImg2ImgPipeline")
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module

    drawn = noise()  # the seeds' first draw, A1111's and ours

    def same_noise(shape, generator=None, device=None, dtype=None, **kwargs):
        assert tuple(shape) == tuple(drawn.shape)
        return drawn.to(dtype)

    monkeypatch.setattr(img2img_module, "randn_tensor", same_noise)
    theirs = pipe(
        **conditioning_kwargs(model),
        image=picture(),
        strength=0.8,
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        output_type="latent",
    ).images
    torch.testing.assert_close(mine, theirs, **tol(theirs))


def test_inpainting_model_conditioning_matches_diffusers(models, posterior_mode):
    # Strength 1 from pure noise: the 9-channel model sees the rounded mask and the masked picture's
    # latents, as in diffusers' inpainting pipeline.
    model = models["sd1-inpaint"]
    sigmas = euler_sigmas(model)
    mask = image_to_pixels(square_mask().convert("RGB"))[:, :1].add(1).div(2)
    guidance = image_guidance(model, (8, 8), len(SEEDS), pixels=image_to_pixels(picture()), mask=mask)
    mine = ours(model, sigmas, image=guidance)

    pipe, scheduler = parts(model, "StableDiffusionInpaintPipeline")
    start = noise() * float(sigmas[0])
    theirs = pipe(
        **conditioning_kwargs(model),
        image=picture(),
        mask_image=square_mask(),
        latents=start / scheduler.init_noise_sigma,
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        height=64,
        width=64,
        output_type="latent",
    ).images
    torch.testing.assert_close(mine, theirs, **tol(theirs))


def test_pix2pix_three_way_guidance_matches_diffusers(models):
    model = models["sd1-pix2pix"]
    sigmas = euler_sigmas(model)
    guidance = image_guidance(
        model, (8, 8), len(SEEDS), pixels=image_to_pixels(picture()), image_cfg_scale=1.5
    )
    assert guidance is not None and guidance.image_cfg_scale == 1.5
    mine = ours(model, sigmas, image=guidance)

    pipe, scheduler = parts(model, "StableDiffusionInstructPix2PixPipeline")
    start = noise() * float(sigmas[0])
    theirs = pipe(
        **conditioning_kwargs(model),
        image=picture(),
        latents=start / scheduler.init_noise_sigma,
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        image_guidance_scale=1.5,
        output_type="latent",
    ).images
    torch.testing.assert_close(mine, theirs, **tol(theirs))
    # negative control: plain CFG (image scale 1) is visibly different
    plain = ours(
        model, sigmas, image=image_guidance(model, (8, 8), len(SEEDS), pixels=image_to_pixels(picture()))
    )
    assert (plain - theirs).abs().max() > 100 * tol(theirs)["atol"]
