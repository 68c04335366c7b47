"""txt2img through the real engine on a tiny model: every sampler, seeds, variation, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfumato.errors import UserError
from sfumato.models.loader import load_single_file
from sfumato.request import build_request
from sfumato.sampling import SAMPLERS
from sfumato.tasks.common import RunControl
from sfumato.tasks.txt2img import generate


@pytest.fixture(scope="module")
def sd1(tiny_models):
    return load_single_file(tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float32)


def pixels(model, **fields):
    request = build_request(prompt="a red circle", width=64, height=64, steps=3, **fields)
    return [np.asarray(g.image) for g in generate(model, request).images]


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_every_sampler_runs_and_is_deterministic_per_seed(sd1, sampler):
    first = pixels(sd1, sampler_name=sampler, seed=1)
    assert first[0].shape == (64, 64, 3)
    assert np.array_equal(first[0], pixels(sd1, sampler_name=sampler, seed=1)[0])
    assert not np.array_equal(first[0], pixels(sd1, sampler_name=sampler, seed=2)[0])


def test_image_in_a_batch_equals_the_same_seed_alone(sd1):
    batch = pixels(sd1, sampler_name="Euler a", seed=40, batch_size=2)
    alone = pixels(sd1, sampler_name="Euler a", seed=41)
    # Same noise; only the batched UNet's float summation order differs, so pixels agree to ±2 levels
    # (a different seed moves them by tens of levels).
    difference = np.abs(batch[1].astype(int) - alone[0].astype(int))
    assert difference.max() <= 2
    assert np.abs(batch[0].astype(int) - alone[0].astype(int)).max() > 10


def test_variation_seed_strength(sd1):
    base = pixels(sd1, sampler_name="Euler", seed=5, subseed=9, subseed_strength=0.0)
    assert np.array_equal(base[0], pixels(sd1, sampler_name="Euler", seed=5)[0])
    varied = pixels(sd1, sampler_name="Euler", seed=5, subseed=9, subseed_strength=0.5)
    assert not np.array_equal(base[0], varied[0])


def test_old_combined_sampler_names_and_conflicts(sd1):
    combined = pixels(sd1, sampler_name="DPM++ 2M Karras", seed=3)
    split = pixels(sd1, sampler_name="DPM++ 2M", scheduler="Karras", seed=3)
    assert np.array_equal(combined[0], split[0])
    with pytest.raises(UserError, match="scheduler"):
        pixels(sd1, sampler_name="DPM++ 2M Karras", scheduler="Exponential", seed=3)
    with pytest.raises(UserError, match="did you mean"):
        pixels(sd1, sampler_name="Euler", scheduler="Karas", seed=3)


def test_long_prompts_are_chunked_not_truncated(sd1):
    long_prompt = ", ".join(["a red circle"] * 40)  # > 75 tokens: two chunks
    short = pixels(sd1, sampler_name="Euler", seed=1)
    request = build_request(prompt=long_prompt, width=64, height=64, steps=3, sampler_name="Euler", seed=1)
    assert not np.array_equal(short[0], np.asarray(generate(sd1, request).images[0].image))


def test_progress_reports_every_step(sd1):
    seen = []
    request = build_request(prompt="x", width=64, height=64, steps=4, sampler_name="Heun", seed=1, n_iter=2)
    generate(sd1, request, RunControl(on_step=lambda p: seen.append((p.image_index, p.step, p.total))))
    assert seen == [(0, s, 4) for s in range(1, 5)] + [(1, s, 4) for s in range(1, 5)]


def test_size_must_suit_the_vae(sd1):
    with pytest.raises(UserError, match="multiple of 8"):
        build_request(prompt="x", width=60, height=64)


def test_a_half_precision_vae_that_overflows_decodes_again_in_fp32(tiny_models, capsys):
    """A1111 #7633: SDXL's VAE makes NaN in fp16. The image is decoded again in fp32, not saved black."""
    from sfumato.models.loader import load_checkpoint
    from sfumato.tasks.common import decode_latents

    half = load_checkpoint(tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float16)
    # The same layout as the half model's (channels_last, the CPU default for half precision), so the
    # fp32 re-decode and this reference run the same kernels.
    full = load_checkpoint(
        tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float32, channels_last=True
    )
    real_decode = half.vae.decode

    def overflowing(latents, *args, **kwargs):
        out = real_decode(latents, *args, **kwargs)
        if latents.dtype == torch.float16:
            out.sample[..., 0, 0] = torch.nan
        return out

    half.vae.decode = overflowing
    full.vae.load_state_dict({k: v.float() for k, v in half.vae.state_dict().items()})  # same rounded weights
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images = decode_latents(half, latents)
    assert "overflowed in fp16" in capsys.readouterr().err
    expected = decode_latents(full, latents)
    assert [i.tobytes() for i in images] == [i.tobytes() for i in expected]
    assert next(half.vae.parameters()).dtype == torch.float16  # back to its own dtype afterwards


def test_decodes_above_512_run_as_the_jobs_peak_work(sd1, monkeypatch):
    """Above 512² the decode is the job's memory peak, so it runs in `runtime.peak_work` (heap trimmed,
    large blocks mapped apart; measured: hires fix 512²->1024² peak RSS 10.15 -> 8.4-8.5 GiB, diffusers 8.6);
    at 512² and below the kept heap saves the decode's page faults, so it stays."""
    from contextlib import contextmanager

    from sfumato.tasks import common

    events: list[str] = []

    @contextmanager
    def recording():
        events.append("enter")
        yield
        events.append("exit")

    monkeypatch.setattr(common, "peak_work", recording)
    common.decode_latents(sd1, torch.zeros(1, 4, 64, 64))  # 512²
    assert events == []
    images = common.decode_latents(sd1, torch.zeros(2, 4, 64, 72))  # two 576×512 images: one for both
    assert events == ["enter", "exit"] and len(images) == 2
