"""Whole txt2img against diffusers' own pipelines on the same tiny models, noise and conditioning.

This checks our denoiser stack (input scaling, fractional timesteps, eps/v prediction, CFG batching,
SDXL's pooled and size conditioning) and noise handling inside a real UNet loop; the sampler step
logic alone is compared in test_samplers.py. Conditioning is compared separately (SD1 and SDXL
encode_prompt) and then handed to diffusers as prompt embeddings, so each test isolates one thing.

Tolerance: float32 on both sides with different operation orders (diffusers divides by
sqrt(sigma²+1) where we multiply by its inverse, interpolates sigmas in numpy float64, etc.); per-step
differences are a few ulps and grow over 10 steps through a random-weight UNet. Latents are of order 1;
1e-4 absolute/relative is ~1000 ulps yet two orders below any real discrepancy (a wrong timestep,
scaling or noise draw moves latents by 1e-2 or more — checked by the negative control below).
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from sfumato.models.loader import load_single_file
from sfumato.prompts.encode import PromptEncoder, encode_prompt
from sfumato.prompts.plan import ConditioningPlan
from sfumato.request import build_request
from sfumato.sampling import DiscreteSchedule, get_sampler, make_sigmas
from sfumato.tasks.common import RunControl
from sfumato.tasks.sampling_run import sample_latents


def tol(reference: torch.Tensor) -> dict[str, float]:
    """1e-4 relative, and 2e-5 of the latents' scale absolute: random-weight UNets give latents up to
    ~50, where a float32 ulp is ~4e-6, so this allows a few hundred ulps of accumulated rounding while
    any real discrepancy (see the negative control) is 100× larger."""
    return {"rtol": 1e-4, "atol": 2e-5 * float(reference.abs().max())}


SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
PROMPT, NEGATIVE = "a red circle on a white background", "blurry, text"
SEEDS = [11, 12]


@pytest.fixture(scope="module")
def models(tiny_models):
    cpu = torch.device("cpu")
    return {
        "sd1": load_single_file(tiny_models["sd1"][0], device=cpu, dtype=torch.float32),
        "sd2-v": load_single_file(
            tiny_models["sd2-v"][0], device=cpu, dtype=torch.float32, prediction="v_prediction"
        ),
        "sdxl": load_single_file(tiny_models["sdxl"][0], device=cpu, dtype=torch.float32),
    }


def ours(
    model, sampler: str, schedule: str, steps: int, cfg: float = 7.0, sigmas: torch.Tensor | None = None
):
    request = build_request(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        sampler_name=sampler,
        scheduler=schedule,
        steps=steps,
        cfg_scale=cfg,
        width=64,
        height=64,
    )
    info = get_sampler(sampler)
    if sigmas is None:
        sigmas = make_sigmas(
            schedule, steps, DiscreteSchedule(model.alphas_cumprod), sampler=sampler, family=model.family
        )
    plan = ConditioningPlan.build(PromptEncoder(model), PROMPT, NEGATIVE, steps, len(SEEDS))
    latents, interrupted = sample_latents(
        model, request, info, sigmas, plan, (4, 8, 8), SEEDS, SEEDS, RunControl()
    )
    assert not interrupted
    start = info.initial_noise_scale(float(sigmas[0]))
    return latents, start, float(sigmas[0])


def diffusers_pipeline(model, scheduler):
    """diffusers' own pipeline over our loaded components (the independent reference)."""
    if model.family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=model.vae,
            text_encoder=model.text_encoders[0],
            text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0],
            tokenizer_2=model.tokenizers[1],
            unet=model.unet,
            scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoders[0],
        tokenizer=model.tokenizers[0],
        unet=model.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def reference(
    model,
    scheduler,
    steps: int,
    start_scale: float,
    sigma_max: float,
    cfg: float = 7.0,
    stop_after=None,
    **schedule,
):
    """diffusers' pipeline from the same components, the same per-image noise, our conditioning."""
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    noise = torch.stack([torch.randn((4, 8, 8), generator=g) for g in generators])  # A1111's first draw
    x0 = noise * start_scale  # our starting point in sigma (VE) space
    vp = scheduler.init_noise_sigma == 1.0  # DPM-Solver/UniPC/DDIM work on x·alpha instead
    latents = x0 / (sigma_max**2 + 1) ** 0.5 if vp else x0 / scheduler.init_noise_sigma
    negative, positive = encode_prompt(model, NEGATIVE), encode_prompt(model, PROMPT)
    kwargs = {
        "prompt_embeds": positive.cross.repeat(2, 1, 1),
        "negative_prompt_embeds": negative.cross.repeat(2, 1, 1),
    }
    pipe = diffusers_pipeline(model, scheduler)
    if model.family == "sdxl":
        kwargs["pooled_prompt_embeds"] = positive.pooled.repeat(2, 1)
        kwargs["negative_pooled_prompt_embeds"] = negative.pooled.repeat(2, 1)
    pipe.set_progress_bar_config(disable=True)
    captured = {}

    def capture(pipeline, step, timestep, tensors):
        if stop_after is not None and step == stop_after - 1:
            captured["latents"] = tensors["latents"].clone()
        return tensors

    out = pipe(
        **kwargs,
        **schedule,
        latents=latents,
        generator=generators,
        guidance_scale=cfg,
        num_inference_steps=None if schedule else steps,
        height=64,
        width=64,
        output_type="latent",
        callback_on_step_end=capture,
    ).images
    return captured.get("latents", out)


CASES = [
    # (sampler, schedule, steps, diffusers scheduler) — 10 "linspace" steps land on integer timesteps,
    # where diffusers' linear sigma interpolation equals A1111's log-sigma one.
    ("Euler", "Uniform", 10, lambda: diffusers.EulerDiscreteScheduler(**SD, timestep_spacing="linspace")),
    (
        "Euler a",
        "Uniform",
        10,
        lambda: diffusers.EulerAncestralDiscreteScheduler(**SD, timestep_spacing="linspace"),
    ),
    ("Heun", "Uniform", 10, lambda: diffusers.HeunDiscreteScheduler(**SD, timestep_spacing="linspace")),
    ("LMS", "Uniform", 10, lambda: diffusers.LMSDiscreteScheduler(**SD, timestep_spacing="linspace")),
]


@pytest.mark.parametrize(
    ("sampler", "schedule", "steps", "make_scheduler"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_sd1_txt2img_matches_diffusers(models, sampler, schedule, steps, make_scheduler):
    model = models["sd1"]
    mine, start, sigma_max = ours(model, sampler, schedule, steps)
    theirs = reference(model, make_scheduler(), steps, start, sigma_max)
    torch.testing.assert_close(mine, theirs, **tol(theirs))


def test_sd1_dpmpp_2m_matches_diffusers(models):
    # A1111's "Uniform" 10 steps sit on integer timesteps 999, 888, …, 0; diffusers takes them as given.
    model = models["sd1"]
    mine, start, sigma_max = ours(model, "DPM++ 2M", "Uniform", 10)
    scheduler = diffusers.DPMSolverMultistepScheduler(**SD, final_sigmas_type="zero")
    theirs = reference(model, scheduler, 10, start, sigma_max, timesteps=list(range(999, -1, -111)))
    torch.testing.assert_close(mine, theirs, **tol(theirs))


@pytest.fixture
def rounded_timesteps(monkeypatch):
    """diffusers' multistep solvers evaluate the UNet at *rounded* timesteps for schedules that fall
    between integers (Karras, UniPC's time-uniform grid); A1111 and we use the fractional ones. To
    compare everything else exactly, this fixture makes us round too, for one test."""
    original = DiscreteSchedule.sigma_to_t
    monkeypatch.setattr(DiscreteSchedule, "sigma_to_t", lambda self, sigma: original(self, sigma).round())


def test_sd1_dpmpp_2m_karras_matches_diffusers(models, rounded_timesteps):
    model = models["sd1"]
    mine, start, sigma_max = ours(model, "DPM++ 2M", "Karras", 12)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **SD, timestep_spacing="linspace", use_karras_sigmas=True, final_sigmas_type="zero"
    )
    theirs = reference(model, scheduler, 12, start, sigma_max)
    torch.testing.assert_close(mine, theirs, **tol(theirs))


def test_sd1_unipc_matches_diffusers(models):
    # A1111's UniPC (bh1, order 3, lower order final, no final denoise). diffusers' UniPC takes no custom
    # grid, so both run on its 9-step integer-timestep grid (A1111's own grid is tested in test_samplers).
    model = models["sd1"]
    scheduler = diffusers.UniPCMultistepScheduler(
        **SD,
        solver_order=3,
        solver_type="bh1",
        timestep_spacing="linspace",
        final_sigmas_type="sigma_min",
        lower_order_final=True,
    )
    scheduler.set_timesteps(9)
    grid = torch.cat([scheduler.sigmas.float(), torch.zeros(1)])
    mine, start, sigma_max = ours(model, "UniPC", "Automatic", 9, sigmas=grid)
    theirs = reference(model, scheduler, 9, start, sigma_max)
    torch.testing.assert_close(mine, theirs, **tol(theirs))


def test_sd1_ddim_matches_diffusers_as_a1111_runs_it(models):
    # A1111's DDIM walks timesteps 951..1 and returns the latent at t=1: diffusers' "leading" DDIM
    # with steps_offset 1, stopped before its last step.
    model = models["sd1"]
    mine, start, sigma_max = ours(model, "DDIM", "Automatic", 20)
    scheduler = diffusers.DDIMScheduler(
        **SD, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False
    )
    theirs = reference(model, scheduler, 20, start, sigma_max, stop_after=19)
    torch.testing.assert_close(mine, theirs, **tol(theirs))


def test_sd2_v_prediction_matches_diffusers(models):
    model = models["sd2-v"]
    mine, start, sigma_max = ours(model, "Euler", "Uniform", 10)
    scheduler = diffusers.EulerDiscreteScheduler(
        **SD, timestep_spacing="linspace", prediction_type="v_prediction"
    )
    theirs = reference(model, scheduler, 10, start, sigma_max)
    torch.testing.assert_close(mine, theirs, **tol(theirs))


def test_sdxl_matches_diffusers(models):
    model = models["sdxl"]
    mine, start, sigma_max = ours(model, "Euler a", "Uniform", 10, cfg=5.0)
    scheduler = diffusers.EulerAncestralDiscreteScheduler(**SD, timestep_spacing="linspace")
    theirs = reference(model, scheduler, 10, start, sigma_max, cfg=5.0)
    torch.testing.assert_close(mine, theirs, **tol(theirs))


def test_negative_control_a_wrong_setting_is_caught(models):
    """The tolerance is tight enough to see a real mistake: the other prediction type differs a lot."""
    model = models["sd1"]
    mine, start, sigma_max = ours(model, "Euler", "Uniform", 10)
    scheduler = diffusers.EulerDiscreteScheduler(
        **SD, timestep_spacing="linspace", prediction_type="v_prediction"
    )
    theirs = reference(model, scheduler, 10, start, sigma_max)
    assert (mine - theirs).abs().max() > 100 * tol(theirs)["atol"]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_conditioning_matches_diffusers_encode_prompt(models, family):
    model = models[family]
    cond = encode_prompt(model, PROMPT)
    pipe = diffusers_pipeline(model, diffusers.EulerDiscreteScheduler(**SD))
    if family == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
        torch.testing.assert_close(cond.pooled, pooled, rtol=1e-4, atol=1e-5)
    else:
        embeds, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    torch.testing.assert_close(cond.cross, embeds, rtol=1e-4, atol=1e-5)


def test_clip_skip_takes_the_nth_last_layer_then_the_final_norm(models):
    # A1111's definition (diffusers' own clip_skip path cannot run on transformers >= 5.6's flattened
    # CLIPTextModel, so the reference is computed by hand from the encoder's hidden states).
    model = models["sd1"]
    encoder, tokenizer = model.text_encoders[0], model.tokenizers[0]
    ids = tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = encoder(input_ids=ids, output_hidden_states=True).hidden_states
        expected = encoder.final_layer_norm(hidden[-2])
    torch.testing.assert_close(
        encode_prompt(model, PROMPT, clip_skip=2).cross, expected, rtol=1e-4, atol=1e-5
    )
    assert not torch.allclose(encode_prompt(model, PROMPT, clip_skip=1).cross, expected)
