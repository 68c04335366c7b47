"""A1111 "CPU" RNG semantics, checked against hand-written torch.Generator references."""

from __future__ import annotations

import torch

from sfumato.sampling import BrownianTreeNoiseSampler, ImageRNG, ImageRNGNoiseSampler

SHAPE = (4, 8, 8)


def draws(seed: int, *shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


def test_first_is_one_generator_per_image():
    s = 1000
    batch = ImageRNG(SHAPE, [s, s + 1]).first()
    assert batch.shape == (2, *SHAPE) and batch.dtype == torch.float32
    assert torch.equal(batch[0], draws(s, SHAPE)[0])
    assert torch.equal(batch[1], ImageRNG(SHAPE, [s + 1]).first()[0])


def test_next_continues_each_images_stream():
    rng = ImageRNG(SHAPE, [5, 6])
    rng.first()
    second, third = rng.next(), rng.next()
    for i, seed in enumerate([5, 6]):
        _, ref2, ref3 = draws(seed, SHAPE, SHAPE, SHAPE)
        assert torch.equal(second[i], ref2) and torch.equal(third[i], ref3)


def test_next_before_first_is_first_as_in_a1111():
    assert torch.equal(ImageRNG(SHAPE, [9]).next(), ImageRNG(SHAPE, [9]).first())


def test_eta_noise_seed_delta_restarts_sampler_noise():
    rng = ImageRNG(SHAPE, [7], eta_noise_seed_delta=31337)
    assert torch.equal(rng.first()[0], draws(7, SHAPE)[0])
    assert torch.equal(rng.next()[0], draws(7 + 31337, SHAPE)[0])


def test_variation_strength_zero_and_one():
    plain = ImageRNG(SHAPE, [1, 2]).first()
    assert torch.equal(ImageRNG(SHAPE, [1, 2], [50, 60], 0.0).first(), plain)
    full = ImageRNG(SHAPE, [1, 2], [50, 60], 1.0).first()
    torch.testing.assert_close(full[0], draws(50, SHAPE)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full[1], draws(60, SHAPE)[0], rtol=1e-5, atol=1e-5)
    # Missing subseeds are 0, as A1111 pads them; the per-image stream still moves on by one draw.
    rng = ImageRNG(SHAPE, [1, 2], [50], 1.0)
    torch.testing.assert_close(rng.first()[1], draws(0, SHAPE)[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(rng.next()[1], draws(2, SHAPE, SHAPE)[1])


def test_variation_slerp_is_a1111s_per_column_slerp():
    strength = 0.3
    mixed = ImageRNG(SHAPE, [1], [2], strength).first()[0]
    low, high = draws(1, SHAPE)[0], draws(2, SHAPE)[0]
    # Reference written out per (channel, column): the great-circle interpolation along H.
    expected = torch.empty(SHAPE)
    for c in range(SHAPE[0]):
        for w in range(SHAPE[2]):
            a, b = low[c, :, w], high[c, :, w]
            omega = torch.acos(torch.dot(a / a.norm(), b / b.norm()))
            expected[c, :, w] = (
                torch.sin((1 - strength) * omega) * a + torch.sin(strength * omega) * b
            ) / torch.sin(omega)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)


def test_seed_resize_pastes_old_size_noise_centred():
    rng = ImageRNG(SHAPE, [3], seed_resize_from_h=32, seed_resize_from_w=32)
    noise = rng.first()[0]
    small = draws(3, (4, 4, 4))[0]
    canvas = draws(3, SHAPE)[0]
    assert torch.equal(noise[:, 2:6, 2:6], small)
    assert torch.equal(noise[:, :2], canvas[:, :2])
    assert torch.equal(rng.next()[0], draws(3, SHAPE, SHAPE)[1])
    bigger = ImageRNG((4, 4, 4), [3], seed_resize_from_h=64, seed_resize_from_w=64).first()[0]
    assert torch.equal(bigger, draws(3, SHAPE)[0][:, 2:6, 2:6])


def test_seed_resize_counts_latents_with_the_vaes_own_factor():
    """The embedded default model's VAE downsamples 2×, not 8×: "resize seed from 8×8" is 4×4 latents."""
    noise = ImageRNG(SHAPE, [3], seed_resize_from_h=8, seed_resize_from_w=8, latent_factor=2).first()[0]
    assert torch.equal(noise[:, 2:6, 2:6], draws(3, (4, 4, 4))[0])
    assert torch.equal(noise[:, :2], draws(3, SHAPE)[0][:, :2])


def test_image_rng_noise_sampler_moves_to_device_and_dtype():
    rng = ImageRNG(SHAPE, [4])
    rng.first()
    out = ImageRNGNoiseSampler(rng, dtype=torch.float64)(1.0, 0.5)
    assert out.dtype == torch.float64 and torch.equal(out[0].float(), draws(4, SHAPE, SHAPE)[1])


def test_brownian_tree_per_image_and_deterministic():
    x = torch.zeros(2, *SHAPE)
    tree = BrownianTreeNoiseSampler(x, 0.03, 14.6, [10, 11])
    a = tree(torch.tensor(5.0), torch.tensor(3.0))
    assert a.shape == x.shape
    assert torch.equal(a, tree(torch.tensor(5.0), torch.tensor(3.0)))
    alone = BrownianTreeNoiseSampler(x[:1], 0.03, 14.6, [11])(torch.tensor(5.0), torch.tensor(3.0))
    assert torch.equal(a[1:], alone)
    assert not torch.allclose(a[0], a[1])
    # Normalised increments: roughly unit variance over many elements.
    big = BrownianTreeNoiseSampler(torch.zeros(1, 4, 64, 64), 0.03, 14.6, [1])(
        torch.tensor(2.0), torch.tensor(1.0)
    )
    assert 0.9 < big.std().item() < 1.1
