"""Sigma schedules: closed forms, shapes, A1111's "Automatic" choices, and the discrete model schedule."""

from __future__ import annotations

import math

import diffusers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sfumato.errors import UserError
from sfumato.sampling import SCHEDULES, DiscreteSchedule, get_schedule, make_sigmas
from sfumato.sampling.schedules import AYS_SD1, AYS_SDXL, ddim_timesteps

MODEL = DiscreteSchedule.from_betas()
SMIN, SMAX = MODEL.sigma_min, MODEL.sigma_max


def test_discrete_schedule_matches_diffusers_and_roundtrips():
    ref = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    # Ours accumulates alpha_bar in float64 like LDM/A1111, diffusers in float32: equal to ~1e-5.
    torch.testing.assert_close(MODEL.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=0)
    assert len(MODEL.sigmas) == 1000 and bool((MODEL.sigmas.diff() > 0).all())
    assert pytest.approx(0.0292, abs=1e-4) == SMIN and pytest.approx(14.6146, abs=1e-4) == SMAX
    t = torch.tensor([0.0, 1.0, 10.5, 500.25, 998.9, 999.0])
    torch.testing.assert_close(MODEL.sigma_to_t(MODEL.t_to_sigma(t)), t, rtol=0, atol=1e-3)
    assert MODEL.sigma_to_t(MODEL.sigmas[37]).item() == pytest.approx(37, abs=1e-4)
    # Between timesteps, log-sigma is linear in t (k-diffusion's interpolation).
    mid = MODEL.t_to_sigma(torch.tensor(10.5))
    assert mid.log().item() == pytest.approx(MODEL.sigmas[10:12].log().mean().item(), rel=1e-6)


def test_zero_terminal_snr_is_a1111s_rescale():
    ztsnr = DiscreteSchedule.from_betas(zero_terminal_snr=True)
    assert ztsnr.sigma_max == pytest.approx(
        math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08), rel=1e-3
    )
    assert ztsnr.alphas_cumprod[0].item() == pytest.approx(MODEL.alphas_cumprod[0].item(), rel=1e-6)
    assert bool((ztsnr.alphas_cumprod.diff() < 0).all())


def test_karras_closed_form():
    n, rho = 15, 7.0
    sigmas = make_sigmas("Karras", n, MODEL).double()
    i = torch.arange(n, dtype=torch.float64)
    expected = (SMAX ** (1 / rho) + i / (n - 1) * (SMIN ** (1 / rho) - SMAX ** (1 / rho))) ** rho
    torch.testing.assert_close(sigmas[:-1], expected, rtol=1e-5, atol=0)
    assert sigmas[-1] == 0
    custom = make_sigmas("karras", n, MODEL, sigma_min=0.1, sigma_max=10.0, rho=3.0).double()
    expected = (10 ** (1 / 3) + i / (n - 1) * (0.1 ** (1 / 3) - 10 ** (1 / 3))) ** 3
    torch.testing.assert_close(custom[:-1], expected, rtol=1e-5, atol=0)


def test_exponential_is_log_linear_and_polyexponential_rho1_equals_it():
    sigmas = make_sigmas("Exponential", 12, MODEL)
    steps = sigmas[:-1].double().log().diff()
    torch.testing.assert_close(
        steps, torch.full_like(steps, (math.log(SMIN) - math.log(SMAX)) / 11), rtol=1e-4, atol=0
    )
    torch.testing.assert_close(make_sigmas("Polyexponential", 12, MODEL), sigmas)


def test_uniform_simple_sgm_normal_ddim_closed_forms():
    n = 10
    torch.testing.assert_close(
        make_sigmas("Uniform", n, MODEL)[:-1], MODEL.sigmas[torch.linspace(999, 0, n).round().long()]
    )
    torch.testing.assert_close(
        make_sigmas("Normal", n, MODEL), make_sigmas("Uniform", n, MODEL), rtol=1e-5, atol=0
    )
    simple = make_sigmas("Simple", n, MODEL)[:-1]
    assert torch.equal(simple, MODEL.sigmas[[999 - 100 * k for k in range(n)]])
    sgm = make_sigmas("SGM Uniform", n, MODEL)[:-1]
    torch.testing.assert_close(sgm, MODEL.t_to_sigma(torch.linspace(999, 0, n + 1)[:-1]), rtol=1e-5, atol=0)
    assert ddim_timesteps(20) == list(range(1, 1000, 50))
    assert torch.equal(make_sigmas("DDIM", 20, MODEL)[:-1], MODEL.sigmas[list(range(951, 0, -50))])


def test_align_your_steps_tables():
    # The tables have 11 sigmas: 11 steps use them as they are, other counts resample log-linearly.
    assert torch.equal(make_sigmas("Align Your Steps", 11, MODEL)[:-1], torch.tensor(AYS_SD1))
    assert torch.equal(make_sigmas("Align Your Steps", 11, MODEL, family="sdxl")[:-1], torch.tensor(AYS_SDXL))
    twenty_one = make_sigmas("Align Your Steps", 21, MODEL)
    torch.testing.assert_close(twenty_one[:-1:2], torch.tensor(AYS_SD1), rtol=1e-6, atol=0)
    resampled = make_sigmas("Align Your Steps", 21, MODEL)
    assert resampled[0] == pytest.approx(14.615) and resampled[-2] == pytest.approx(0.029)


def test_kl_optimal_and_beta():
    kl = make_sigmas("KL Optimal", 8, MODEL).double()
    angles = kl.atan().diff()
    torch.testing.assert_close(angles, torch.full_like(angles, angles.mean().item()), rtol=1e-4, atol=0)
    # A1111 does not append a 0 to KL Optimal: the last step ends at sigma_min.
    assert len(kl) == 9 and kl[-1] == pytest.approx(SMIN, rel=1e-5)
    beta = make_sigmas("Beta", 8, MODEL)
    assert beta[0] == pytest.approx(SMAX, rel=1e-5) and beta[-2] == pytest.approx(SMIN, rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 150), schedule=st.sampled_from([s.label for s in SCHEDULES]))
def test_shape_monotonic_and_zero_end(steps, schedule):
    sigmas = make_sigmas(schedule, steps, MODEL)
    assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu"
    if schedule == "DDIM":  # A1111's DDIM grid has len(range(0, 1000, 1000 // steps)) timesteps
        assert len(sigmas) == len(ddim_timesteps(steps)) + 1
    else:
        assert len(sigmas) == steps + 1
    if schedule != "KL Optimal":
        assert sigmas[-1] == 0
    assert bool((sigmas.diff() <= 0).all())
    if steps > 1 and schedule not in ("Align Your Steps", "Simple", "DDIM"):
        assert bool((sigmas.diff() < 0).all())


def test_automatic_follows_the_sampler():
    n = 12
    uniform = make_sigmas("Uniform", n, MODEL)
    assert torch.equal(make_sigmas("Automatic", n, MODEL, sampler="Euler"), uniform)
    assert torch.equal(make_sigmas("Automatic", n, MODEL, sampler="Euler a"), uniform)
    assert torch.equal(make_sigmas("Automatic", n, MODEL), uniform)
    assert torch.equal(
        make_sigmas("Automatic", n, MODEL, sampler="DPM++ 2M"), make_sigmas("Karras", n, MODEL)
    )
    assert torch.equal(
        make_sigmas("Automatic", n, MODEL, sampler="DPM++ SDE"), make_sigmas("Karras", n, MODEL)
    )
    assert torch.equal(
        make_sigmas("Automatic", n, MODEL, sampler="DPM++ 2M SDE"), make_sigmas("Exponential", n, MODEL)
    )


def test_discard_penultimate_sigma():
    n = 10
    dpm2 = make_sigmas("Automatic", n, MODEL, sampler="DPM2")
    karras = make_sigmas("Karras", n + 1, MODEL)
    assert len(dpm2) == n + 1 and torch.equal(dpm2, torch.cat([karras[:-2], karras[-1:]]))
    tm = make_sigmas("Automatic", n, MODEL, sampler="DPM++ 3M SDE")
    assert torch.equal(tm, torch.cat([make_sigmas("Exponential", n + 1, MODEL)[:-2], torch.zeros(1)]))
    # The rule applies to any schedule type, and A1111's "always discard" setting to any sampler.
    assert len(make_sigmas("Uniform", n, MODEL, sampler="DPM2 a")) == n + 1
    forced = make_sigmas("Uniform", n, MODEL, sampler="Euler", discard_penultimate=True)
    full = make_sigmas("Uniform", n + 1, MODEL)
    assert torch.equal(forced, torch.cat([full[:-2], full[-1:]]))


def test_timestep_samplers_use_their_own_grids():
    ddim = make_sigmas("Karras", 20, MODEL, sampler="DDIM")
    assert torch.equal(ddim, make_sigmas("DDIM", 20, MODEL))
    assert ddim[0] == MODEL.sigmas[951] and ddim[-2] == MODEL.sigmas[1]
    assert len(make_sigmas("Automatic", 30, MODEL, sampler="DDIM")) == len(range(0, 1000, 33)) + 1
    unipc = make_sigmas("Automatic", 20, MODEL, sampler="UniPC")
    assert len(unipc) == 22 and unipc[-1] == 0
    assert unipc[0].item() == pytest.approx(SMAX, rel=1e-5) and unipc[-2].item() == pytest.approx(
        SMIN, rel=1e-5
    )
    # time-uniform in t: at integer timesteps (20 steps: t = 999 - 49.95 k) the grid is the model's sigma
    assert unipc[20].item() == pytest.approx(MODEL.sigmas[0].item(), rel=1e-5)
    lcm = make_sigmas("Automatic", 8, MODEL, sampler="LCM")
    torch.testing.assert_close(lcm[:-1], MODEL.sigmas[[999 - 140 * k for k in range(8)]])


def test_unknown_schedule_suggests_close_matches():
    with pytest.raises(UserError, match="Karras"):
        make_sigmas("Karas", 10, MODEL)
    assert get_schedule("sgmuniform").label == "SGM Uniform"
    assert get_schedule("align_your_steps").label == "Align Your Steps"
