"""Our sigma-space samplers against diffusers' schedulers on the same analytic model and noise.

The "model" is a cheap smooth eps-predictor eps(x_in, t). diffusers drives it through its scheduler
(scale_model_input, timestep t, step); we drive the same function through a k-diffusion denoiser
(x_in = x / sqrt(1 + sigma^2), t = sigma_to_t(sigma), x0 = x - sigma * eps). Where diffusers draws
per-step noise from the generators we pass, our `ImageRNG` draws the same numbers in the same order.

Tolerance: both sides compute in float32 with different operation orders (e.g. diffusers' sigma
interpolation in numpy float64, Karras sigmas in numpy, timesteps recovered from sigmas), so per-step
results agree to a few float32 ulps and the error grows mildly over the steps. With latents of order 1
an absolute/relative tolerance of 1e-4 is ~1000 ulps: far below any algorithmic difference (a wrong
coefficient or a shifted noise draw shows up as 1e-2 or more) and well above accumulated rounding.
"""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch

from sfumato.errors import UserError
from sfumato.sampling import (
    SAMPLERS,
    BrownianTreeNoiseSampler,
    DiscreteSchedule,
    ImageRNG,
    ImageRNGNoiseSampler,
    StepInfo,
    get_sampler,
    make_sigmas,
    split_sampler_name,
)
from sfumato.sampling import samplers as S

TOL = {"rtol": 1e-4, "atol": 1e-4}
SHAPE = (4, 8, 8)
SD_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}
_MIX = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) / 2


def eps_model(x_in: torch.Tensor, t) -> torch.Tensor:
    """A smooth, mildly nonlinear stand-in for a UNet: eps as a function of the scaled input and t."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)
    mixed = torch.einsum("ij,bjhw->bihw", _MIX, x_in)
    return x_in * (0.3 + 0.6 * t / 1000) + 0.2 * torch.tanh(mixed) * torch.cos(t / 300)


def make_denoiser(model: DiscreteSchedule, *, round_t: bool = False):
    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1)
        t = model.sigma_to_t(sigma)
        return x - s * eps_model(x / (s**2 + 1) ** 0.5, t.round() if round_t else t)

    return denoiser


def run_diffusers(scheduler, x, *, generator=None, limit=None):
    for i, t in enumerate(scheduler.timesteps):
        if limit is not None and i >= limit:
            break
        eps = eps_model(scheduler.scale_model_input(x, t), t)
        kwargs = {"generator": generator} if generator is not None else {}
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x


def model_of(scheduler) -> DiscreteSchedule:
    return DiscreteSchedule(scheduler.alphas_cumprod)


def unique_sigmas(scheduler) -> torch.Tensor:
    """The step sigmas of a scheduler that repeats them for its second-order substeps."""
    return torch.unique_consecutive(scheduler.sigmas.float())


def seeded(seeds):
    """Initial noise and a noise sampler from ImageRNG, and diffusers generators positioned after the
    same initial draw (diffusers' randn_tensor with a generator list draws image by image, as A1111)."""
    rng = ImageRNG(SHAPE, seeds)
    noise = rng.first()
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    for g in generators:
        torch.randn(SHAPE, generator=g)
    return noise, ImageRNGNoiseSampler(rng), generators


@pytest.mark.parametrize(
    ("sampler", "scheduler_cls", "config", "stochastic"),
    [
        ("Euler", diffusers.EulerDiscreteScheduler, {}, False),
        ("Euler a", diffusers.EulerAncestralDiscreteScheduler, {}, True),
        ("Heun", diffusers.HeunDiscreteScheduler, {}, False),
        ("LMS", diffusers.LMSDiscreteScheduler, {}, False),
    ],
)
def test_uniform_schedule_samplers_match_diffusers(sampler, scheduler_cls, config, stochastic):
    # 10 steps with "linspace" spacing put diffusers' timesteps on integers (999, 888, ..., 0), where its
    # linear sigma interpolation equals k-diffusion's log-sigma one, so A1111's "Uniform" schedule is the
    # same. (DPM++ 2M's A1111 default is Karras, compared below.)
    scheduler = scheduler_cls(**SD_CONFIG, timestep_spacing="linspace", **config)
    scheduler.set_timesteps(10)
    model = model_of(scheduler)
    sigmas = make_sigmas("Uniform", 10, model, sampler=sampler)
    torch.testing.assert_close(sigmas, unique_sigmas(scheduler), **TOL)
    noise, noise_sampler, generators = seeded([11, 12])
    ref = run_diffusers(scheduler, noise * sigmas[0], generator=generators if stochastic else None)
    ours = get_sampler(sampler)(make_denoiser(model), noise * sigmas[0], sigmas, noise=noise_sampler)
    torch.testing.assert_close(ours, ref, **TOL)


def test_dpmpp_2m_karras_matches_diffusers():
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **SD_CONFIG, timestep_spacing="linspace", use_karras_sigmas=True, final_sigmas_type="zero"
    )
    scheduler.set_timesteps(12)
    model = model_of(scheduler)
    name, schedule = split_sampler_name("DPM++ 2M Karras")
    sigmas = make_sigmas(schedule, 12, model, sampler=name)
    assert torch.equal(sigmas, make_sigmas("Automatic", 12, model, sampler=name))
    torch.testing.assert_close(sigmas, scheduler.sigmas.float(), **TOL)
    noise, _, _ = seeded([3])
    # diffusers' DPM-Solver works on the VP latent: its start `noise` is our noise * sqrt(1 + sigma^2);
    # it rounds the Karras timesteps it feeds the model (A1111 does not), so our test model does too.
    ref = run_diffusers(scheduler, noise)
    x = noise * (1 + sigmas[0] ** 2) ** 0.5
    ours = get_sampler(name)(make_denoiser(model, round_t=True), x, sigmas)
    torch.testing.assert_close(ours, ref, **TOL)


def test_dpmpp_2m_sde_matches_diffusers_with_the_same_noise():
    # diffusers' sde-dpmsolver++ draws its noise from the generator; A1111 uses a brownian tree, but the
    # step logic is what is compared here, so our sampler gets the ImageRNG stream diffusers reads.
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **SD_CONFIG, algorithm_type="sde-dpmsolver++", timestep_spacing="linspace", final_sigmas_type="zero"
    )
    scheduler.set_timesteps(10)
    model = model_of(scheduler)
    sigmas = scheduler.sigmas.float()
    noise, noise_sampler, generators = seeded([5, 6])
    ref = run_diffusers(scheduler, noise, generator=generators)  # VP start, as above
    x = noise * (1 + sigmas[0] ** 2) ** 0.5
    ours = get_sampler("DPM++ 2M SDE")(make_denoiser(model), x, sigmas, noise=noise_sampler)
    torch.testing.assert_close(ours, ref, **TOL)


def test_dpmpp_sde_matches_diffusers_with_the_same_brownian_tree():
    seed = 1234
    scheduler = diffusers.DPMSolverSDEScheduler(
        **SD_CONFIG, timestep_spacing="linspace", noise_sampler_seed=seed
    )
    scheduler.set_timesteps(8)
    model = model_of(scheduler)
    sigmas = unique_sigmas(scheduler)
    noise, _, _ = seeded([seed])
    x = noise * sigmas[0]
    ref = run_diffusers(scheduler, x)
    tree = BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), [seed])
    ours = get_sampler("DPM++ SDE")(make_denoiser(model), x, sigmas, noise=tree)
    torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize(
    ("sampler", "scheduler_cls", "stochastic"),
    [
        ("DPM2", diffusers.KDPM2DiscreteScheduler, False),
        ("DPM2 a", diffusers.KDPM2AncestralDiscreteScheduler, True),
    ],
)
def test_dpm2_step_logic_matches_diffusers(sampler, scheduler_cls, stochastic):
    # A1111 gives DPM2 a Karras schedule with the penultimate sigma discarded; diffusers cannot express
    # that, so the step logic is compared on diffusers' own sigmas (the schedule is tested separately).
    scheduler = scheduler_cls(**SD_CONFIG, timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    model = model_of(scheduler)
    sigmas = unique_sigmas(scheduler)
    noise, noise_sampler, generators = seeded([21, 22])
    ref = run_diffusers(scheduler, noise * sigmas[0], generator=generators if stochastic else None)
    ours = get_sampler(sampler)(make_denoiser(model), noise * sigmas[0], sigmas, noise=noise_sampler)
    torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers_as_a1111_runs_it(eta):
    # A1111's DDIM timesteps for 20 steps are 1, 51, ..., 951 = diffusers' "leading" spacing with
    # steps_offset 1. A1111 walks them down to timestep 1 and returns that VP latent (19 model calls),
    # so diffusers is stopped before its last step. Both start from the unit-variance VP noise.
    scheduler = diffusers.DDIMScheduler(
        **SD_CONFIG, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False
    )
    scheduler.set_timesteps(20)
    model = model_of(scheduler)
    info = get_sampler("DDIM")
    sigmas = make_sigmas("Karras", 20, model, sampler="DDIM")  # A1111 ignores the schedule type for DDIM
    torch.testing.assert_close(sigmas[:-1], model.sigmas[scheduler.timesteps], **TOL)
    noise, noise_sampler, generators = seeded([7, 8])
    ref = noise
    for t in scheduler.timesteps[:19]:
        ref = scheduler.step(eps_model(ref, t), t, ref, eta=eta, generator=generators).prev_sample
    calls = []
    denoiser = make_denoiser(model)
    ours = info(
        lambda x, s: calls.append(1) or denoiser(x, s),
        noise * info.initial_noise_scale(float(sigmas[0])),
        sigmas,
        noise=noise_sampler,
        eta=eta,
    )
    assert len(calls) == 19 == info.model_calls(sigmas)
    torch.testing.assert_close(ours, ref, **TOL)


def test_unipc_matches_diffusers():
    # A1111's UniPC: bh1, order 3, lower order final, data prediction, from t=999 down to t=0 and no
    # final denoise; diffusers' UniPC with final_sigmas_type="sigma_min" does the same. 9 steps keep the
    # time-uniform grid on integer timesteps so both evaluate the model at the same t.
    scheduler = diffusers.UniPCMultistepScheduler(
        **SD_CONFIG,
        solver_order=3,
        solver_type="bh1",
        timestep_spacing="linspace",
        final_sigmas_type="sigma_min",
        lower_order_final=True,
    )
    scheduler.set_timesteps(9)
    model = model_of(scheduler)
    sigmas = torch.cat([scheduler.sigmas.float(), torch.zeros(1)])
    info = get_sampler("UniPC")
    noise, _, _ = seeded([9])
    ref = run_diffusers(scheduler, noise)
    ours = info(make_denoiser(model), noise * info.initial_noise_scale(float(sigmas[0])), sigmas)
    torch.testing.assert_close(ours, ref, **TOL)


def test_lcm_matches_diffusers():
    scheduler = diffusers.LCMScheduler(**SD_CONFIG)
    scheduler.set_timesteps(4)
    model = model_of(scheduler)
    timesteps = scheduler.timesteps
    sigmas = torch.cat([model.sigmas[timesteps], torch.zeros(1)])
    plain = make_denoiser(model)

    def lcm_denoiser(x, sigma):
        # LCM's boundary condition (c_skip, c_out at 10 * t) belongs to the denoiser, as in diffusers.
        s = sigma.reshape(-1, 1, 1, 1)
        scaled = model.sigma_to_t(sigma).reshape(-1, 1, 1, 1).round() * 10
        c_skip = 0.25 / (scaled**2 + 0.25)
        c_out = scaled / (scaled**2 + 0.25) ** 0.5
        return c_out * plain(x, sigma) + c_skip * x / (1 + s**2) ** 0.5

    noise, noise_sampler, generators = seeded([31, 32])
    ref = run_diffusers(scheduler, noise, generator=generators)
    ours = get_sampler("LCM")(lcm_denoiser, noise * (1 + sigmas[0] ** 2) ** 0.5, sigmas, noise=noise_sampler)
    torch.testing.assert_close(ours, ref, **TOL)


# --- every registered sampler -------------------------------------------------------------------------

MODEL = DiscreteSchedule.from_betas()


def _run(name: str, seeds: list[int], steps: int = 6, **options):
    info = get_sampler(name)
    sigmas = make_sigmas("Automatic", steps, MODEL, sampler=name)
    rng = ImageRNG(SHAPE, seeds)
    x = rng.first() * info.initial_noise_scale(float(sigmas[0]))
    if info.brownian:
        noise = BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seeds)
    else:
        noise = ImageRNGNoiseSampler(rng)
    reports: list[StepInfo] = []
    calls = []
    denoiser = make_denoiser(MODEL)
    out = info(
        lambda x, s: calls.append(1) or denoiser(x, s),
        x,
        sigmas,
        noise=noise,
        callback=reports.append,
        **options,
    )
    return out, reports, len(calls), info.model_calls(sigmas)


@pytest.mark.parametrize("name", [s.name for s in SAMPLERS])
def test_every_sampler_runs_is_finite_and_deterministic(name):
    out, reports, calls, expected_calls = _run(name, [1, 2])
    assert out.shape == (2, *SHAPE)
    assert torch.isfinite(out).all()
    assert torch.equal(out, _run(name, [1, 2])[0])
    if expected_calls is not None:
        assert calls == expected_calls
    assert reports, "the callback is called every step"
    assert [r.step for r in reports] == list(range(len(reports)))
    if reports[0].total is not None:
        assert reports[0].total == len(reports)


@pytest.mark.parametrize("name", [s.name for s in SAMPLERS if s.uses_noise])
def test_noisy_samplers_depend_on_the_seed_beyond_the_initial_noise(name):
    info = get_sampler(name)
    sigmas = make_sigmas("Automatic", 20 if name == "Restart" else 6, MODEL, sampler=name)
    x = ImageRNG(SHAPE, [1]).first() * info.initial_noise_scale(float(sigmas[0]))
    denoiser = make_denoiser(MODEL)
    outs = []
    for seed in (100, 200):
        if info.brownian:
            noise = BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), [seed])
        else:
            noise = ImageRNGNoiseSampler(ImageRNG(SHAPE, [seed]))
        outs.append(info(denoiser, x, sigmas, noise=noise))
    assert not torch.allclose(outs[0], outs[1])


@pytest.mark.parametrize("name", [s.name for s in SAMPLERS if not s.uses_noise])
def test_deterministic_samplers_need_no_noise(name):
    info = get_sampler(name)
    sigmas = make_sigmas("Automatic", 5, MODEL, sampler=name)
    x = ImageRNG(SHAPE, [1]).first() * float(sigmas[0])
    assert torch.isfinite(info(make_denoiser(MODEL), x, sigmas)).all()


def test_batch_image_equals_the_same_seed_alone():
    # Per-image generators and per-image brownian trees: image 1 of seeds [s, s+1] is seed s+1 alone.
    for name in ("Euler a", "DPM++ 2M SDE", "DPM++ SDE"):
        batch = _run(name, [40, 41])[0]
        alone = _run(name, [41])[0]
        torch.testing.assert_close(batch[1:], alone, rtol=1e-5, atol=1e-5)


def test_eta_zero_makes_ancestral_samplers_deterministic_and_ddim_eta_matches_euler():
    sigmas = make_sigmas("Automatic", 6, MODEL, sampler="Euler")
    x = ImageRNG(SHAPE, [3]).first() * float(sigmas[0])
    denoiser = make_denoiser(MODEL)
    euler = get_sampler("Euler")(denoiser, x, sigmas)
    euler_a = get_sampler("Euler a")(denoiser, x, sigmas, eta=0.0)
    torch.testing.assert_close(euler_a, euler)
    # DDIM with eta 0 on the same sigmas is Euler; the stop before sigma 0 returns the VP latent.
    ddim = S.sample_ddim(denoiser, x, sigmas)
    euler_to_last = S.sample_euler(denoiser, x, sigmas[:-1])
    torch.testing.assert_close(ddim, euler_to_last / (1 + sigmas[-2] ** 2) ** 0.5)


def test_churn_draws_noise_every_step_like_a1111():
    sigmas = make_sigmas("Automatic", 5, MODEL, sampler="Euler")
    rng = ImageRNG(SHAPE, [1])
    x = rng.first() * float(sigmas[0])
    get_sampler("Euler")(
        make_denoiser(MODEL), x, sigmas, noise=ImageRNGNoiseSampler(rng), s_churn=1.0, s_tmin=5.0
    )
    reference = torch.Generator().manual_seed(1)
    for _ in range(1 + 5):  # the initial noise, then one draw per step even where churn is off
        torch.randn(SHAPE, generator=reference)
    assert torch.equal(rng.next()[0], torch.randn(SHAPE, generator=reference))


def test_callback_exceptions_propagate_and_report_contents():
    class Stop(Exception):
        pass

    def callback(info: StepInfo):
        assert info.sigma > info.sigma_next
        assert info.x.shape == info.denoised.shape
        if info.step == 2:
            raise Stop

    sigmas = make_sigmas("Automatic", 6, MODEL, sampler="DPM++ 2M")
    x = ImageRNG(SHAPE, [1]).first() * float(sigmas[0])
    with pytest.raises(Stop):
        get_sampler("DPM++ 2M")(make_denoiser(MODEL), x, sigmas, callback=callback)


def test_options_follow_a1111_defaults_and_unknown_options_fail():
    assert inspect.signature(get_sampler("Euler a").fn).parameters["eta"].default == 1.0
    assert inspect.signature(get_sampler("DDIM").fn).parameters["eta"].default == 0.0
    assert get_sampler("DPM++ 2M SDE Heun").defaults == {"solver_type": "heun"}
    sigmas = make_sigmas("Automatic", 3, MODEL, sampler="Euler")
    x = torch.zeros(1, *SHAPE)
    get_sampler("Euler")(make_denoiser(MODEL), x, sigmas, eta=0.5)  # ignored, as A1111 does
    with pytest.raises(TypeError):
        get_sampler("Euler")(make_denoiser(MODEL), x, sigmas, etaa=0.5)


def test_metadata():
    assert get_sampler("DPM++ SDE").brownian and get_sampler("DPM++ 3M SDE").brownian
    assert not get_sampler("Euler a").brownian and get_sampler("Euler a").uses_noise
    assert not get_sampler("Euler").uses_noise and not get_sampler("DDIM").uses_noise
    assert get_sampler("Heun").calls_per_step == 2
    assert get_sampler("DPM++ 2M").default_schedule == "Karras"
    assert get_sampler("DPM++ 2M SDE").default_schedule == "Exponential"
    assert get_sampler("Euler").default_schedule == "Uniform"
    assert get_sampler("DPM2").discard_penultimate and get_sampler("DPM++ 3M SDE").discard_penultimate
    assert get_sampler("DDIM").initial_noise_scale(3.0) == pytest.approx(10**0.5)
    assert get_sampler("Euler").initial_noise_scale(3.0) == 3.0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Euler a", ("Euler a", None)),
        ("euler a", ("Euler a", None)),
        ("k_euler_ancestral", ("Euler a", None)),
        ("k_dpmpp_2m", ("DPM++ 2M", None)),
        ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
        ("DPM++ SDE Karras", ("DPM++ SDE", "Karras")),
        ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
        ("DPM++ 2M SDE Heun Karras", ("DPM++ 2M SDE Heun", "Karras")),
        ("DPM2 a Karras", ("DPM2 a", "Karras")),
        ("k_dpmpp_2m_ka", ("DPM++ 2M", "Karras")),
        ("k_dpmpp_3m_sde_exp", ("DPM++ 3M SDE", "Exponential")),
        ("Euler SGMUniform", ("Euler", "SGM Uniform")),
        ("DDIM", ("DDIM", None)),
        ("UniPC", ("UniPC", None)),
    ],
)
def test_split_sampler_name(name, expected):
    assert split_sampler_name(name) == expected


def test_unknown_sampler_names_suggest_close_matches():
    with pytest.raises(UserError, match="DPM\\+\\+ 2M"):
        get_sampler("DPM++ 2N")
    with pytest.raises(UserError, match="Euler a"):
        split_sampler_name("Euler aa")
    with pytest.raises(UserError, match="unknown sampler"):
        get_sampler("DPM++ 2M Karras")  # combined names go through split_sampler_name
