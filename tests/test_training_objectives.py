"""Diffusion and VAE objectives: closed forms, cross-checked against diffusers' DDPM scheduler."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from sfumato.models.loader import sd_alphas_cumprod
from sfumato.testing.tiny_models import build_components
from sfumato.training.objectives import (
    DiffusionObjective,
    TimestepBias,
    VAEObjective,
    add_noise,
    min_snr_weights,
    prediction_target,
    sample_noise,
    sample_timesteps,
    snr,
    weighted_mse,
)
from sfumato.training.trainer import StepContext

ALPHAS = sd_alphas_cumprod()


def test_noising_and_targets_closed_form() -> None:
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=generator)
    noise = torch.randn(3, 4, 8, 8, generator=generator)
    t = torch.tensor([0, 499, 999])
    alpha = ALPHAS[t].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - ALPHAS[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(add_noise(x0, noise, t, ALPHAS), alpha * x0 + sigma * noise)
    assert torch.equal(prediction_target("epsilon", x0, noise, t, ALPHAS), noise)
    v = prediction_target("v_prediction", x0, noise, t, ALPHAS)
    assert torch.allclose(v, alpha * noise - sigma * x0)
    # the same as diffusers' scheduler with SD's betas
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert torch.allclose(add_noise(x0, noise, t, ALPHAS), scheduler.add_noise(x0, noise, t), atol=1e-6)
    assert torch.allclose(v, scheduler.get_velocity(x0, noise, t), atol=1e-6)


def test_min_snr_weights_closed_form() -> None:
    t = torch.tensor([0, 100, 400, 999])
    ratio = ALPHAS[t] / (1 - ALPHAS[t])
    assert torch.allclose(snr(t, ALPHAS), ratio)
    gamma = 5.0
    eps = min_snr_weights(t, ALPHAS, gamma, "epsilon")
    v = min_snr_weights(t, ALPHAS, gamma, "v_prediction")
    assert torch.allclose(eps, torch.minimum(ratio, torch.tensor(gamma)) / ratio)
    assert torch.allclose(v, torch.minimum(ratio, torch.tensor(gamma)) / (ratio + 1))
    # low noise (high SNR) is down-weighted; once SNR < γ an eps weight is exactly 1
    assert eps[0] < 0.01 and eps[-1] == 1.0
    assert torch.allclose(v[-1], ratio[-1] / (ratio[-1] + 1))


def test_timesteps_and_noise_are_seeded() -> None:
    draw = [sample_timesteps(64, 1000, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(draw[0], draw[1])
    assert draw[0].min() >= 0 and draw[0].max() < 1000 and draw[0].dtype == torch.int64
    plain = sample_noise(torch.Size([2, 4, 8, 8]), torch.Generator().manual_seed(1))
    offset = sample_noise(torch.Size([2, 4, 8, 8]), torch.Generator().manual_seed(1), offset=0.1)
    shift = offset - plain  # the same per-channel constant over each channel's pixels
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    assert shift.abs().max() > 0


@pytest.mark.parametrize(
    ("bias", "favoured"),
    [
        (TimestepBias("earlier", multiplier=3.0, portion=0.5), slice(0, 500)),
        (TimestepBias("later", multiplier=2.0, portion=0.25), slice(750, 1000)),
        (TimestepBias("range", multiplier=4.0, begin=200, end=300), slice(200, 300)),
    ],
)
def test_timestep_bias_probabilities_closed_form(bias: TimestepBias, favoured: slice) -> None:
    p = bias.probabilities(1000)
    inside = torch.zeros(1000, dtype=torch.bool)
    inside[favoured] = True
    n = int(inside.sum())
    base = 1 / (1000 - n + bias.multiplier * n)  # one unfavoured timestep's probability
    assert torch.allclose(p[~inside], torch.full((1000 - n,), base, dtype=p.dtype))
    assert torch.allclose(p[inside], torch.full((n,), bias.multiplier * base, dtype=p.dtype))
    assert torch.isclose(p.sum(), torch.tensor(1.0, dtype=p.dtype))


def test_biased_timesteps_follow_the_bias_and_are_seeded() -> None:
    bias = TimestepBias("earlier", multiplier=3.0, portion=0.5)
    draws = [sample_timesteps(20000, 1000, torch.Generator().manual_seed(3), bias) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    share_low = (draws[0] < 500).float().mean().item()
    assert abs(share_low - 0.75) < 0.015  # 3 : 1 over two halves; binomial sd is 0.003
    assert draws[0].min() >= 0 and draws[0].max() < 1000
    uniform = sample_timesteps(64, 1000, torch.Generator().manual_seed(5), TimestepBias())
    assert torch.equal(uniform, sample_timesteps(64, 1000, torch.Generator().manual_seed(5)))


@pytest.mark.parametrize(
    "options",
    [{"multiplier": 0.0}, {"portion": 0.0}, {"portion": 1.5}, {"strategy": "range", "begin": 5, "end": 5}],
)
def test_timestep_bias_refuses_meaningless_settings(options: dict) -> None:
    with pytest.raises(ValueError, match="timestep bias"):
        TimestepBias(**options)


def test_diffusion_objective_draws_its_timesteps_with_the_bias() -> None:
    parts = build_components("sd1", seed=0)
    seen: list[torch.Tensor] = []
    forward = parts.unet.forward

    def spy(sample, timestep, *args, **kwargs):
        seen.append(timestep.clone())
        return forward(sample, timestep, *args, **kwargs)

    parts.unet.forward = spy
    only_t7 = TimestepBias("range", multiplier=1e12, begin=7, end=8)
    objective = DiffusionObjective(
        parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, ALPHAS, timestep_bias=only_t7
    )
    batch = {"pixel_values": torch.zeros(4, 3, 32, 32), "captions": ["a"] * 4, "item_indices": None}
    objective.loss(batch, StepContext(0, 0, torch.Generator().manual_seed(0)))
    assert seen and torch.equal(seen[0], torch.full((4,), 7))


def test_weighted_mse() -> None:
    prediction = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    assert weighted_mse(prediction, target).item() == 2.5
    assert weighted_mse(prediction, target, torch.tensor([1.0, 0.5])).item() == 1.5


def test_vae_objective_backpropagates() -> None:
    vae = build_components("sd1", seed=0).vae
    objective = VAEObjective(vae, kl_weight=1e-3)
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    loss = objective.loss({"pixel_values": pixels}, StepContext(0, 0, torch.Generator().manual_seed(0)))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None for p in objective.trainable_parameters())
    again = objective.loss({"pixel_values": pixels}, StepContext(0, 0, torch.Generator().manual_seed(0)))
    assert torch.equal(loss.detach(), again.detach())


def test_vae_foreground_weighting_closed_form() -> None:
    """Pixels unlike the image's median colour weigh 1 + w; w = 0 is the plain mean L1."""
    vae = build_components("sd1", seed=0).vae
    pixels = torch.full((2, 3, 32, 32), -0.5)
    pixels[0, :, 4:12, 4:12] = 0.8  # a square on a plain background
    pixels[1, 0, 20:24, 8:30] = 0.9  # a bar in one channel only
    weighted = VAEObjective(vae, foreground_weight=10.0)
    weights = weighted.pixel_weights(pixels)
    expected = torch.ones(2, 1, 32, 32)
    expected[0, :, 4:12, 4:12] = 11.0
    expected[1, :, 20:24, 8:30] = 11.0
    assert torch.equal(weights, expected)

    def decoded_and_kl(objective: VAEObjective) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = vae.encode(pixels).latent_dist
        generator = torch.Generator().manual_seed(0)
        decoded = vae.decode(posterior.sample(generator=generator)).sample
        return decoded, posterior.kl().mean() / pixels[0].numel()

    with torch.no_grad():
        decoded, kl = decoded_and_kl(weighted)
        step = StepContext(0, 0, torch.Generator().manual_seed(0))
        got = weighted.loss({"pixel_values": pixels}, step)
        error = (decoded - pixels).abs()
        assert torch.allclose(got, (error * expected).mean() / expected.mean() + 1e-6 * kl, rtol=1e-5)
        plain = VAEObjective(vae).loss(
            {"pixel_values": pixels}, StepContext(0, 0, torch.Generator().manual_seed(0))
        )
        assert torch.allclose(plain, torch.nn.functional.l1_loss(decoded, pixels) + 1e-6 * kl, rtol=1e-5)
        assert not torch.allclose(got, plain)


def test_vae_object_crops_centre_on_the_object() -> None:
    vae = build_components("sd1", seed=0).vae
    pixels = torch.full((3, 3, 64, 64), -0.5)
    pixels[:, :, 40:48, 6:14] = 0.8  # an 8-px square whose centre is (44, 10)
    always = VAEObjective(vae, crop_size=32, object_crop_share=1.0)
    crops = always.crops(pixels, torch.Generator().manual_seed(0))
    assert crops.shape == (3, 3, 32, 32)
    assert all((crop > 0).any() for crop in crops)  # every crop holds part of the object
    never = VAEObjective(vae, crop_size=32, object_crop_share=0.0)
    plain = never.crops(pixels, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    for crop in plain:  # uniform placement: the same draws, in the same order, give the same windows
        torch.rand(1, generator=generator)  # the object-or-not draw
        top, left = (
            int(torch.randint(33, (1,), generator=generator)),
            int(torch.randint(33, (1,), generator=generator)),
        )
        assert torch.equal(crop, pixels[0, :, top : top + 32, left : left + 32])
    with torch.no_grad():
        loss = always.loss({"pixel_values": pixels}, StepContext(0, 0, torch.Generator().manual_seed(0)))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="crop_size 80"):
        VAEObjective(vae, crop_size=80).crops(pixels, torch.Generator())
