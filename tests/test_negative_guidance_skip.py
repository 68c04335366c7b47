"""A1111's "Negative Guidance minimum sigma" (NGMS): the opt-in skip of the negative prompt's UNet half."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfumato.generation_params import infotext_params, request_fields_from_infotext
from sfumato.infotext import parse
from sfumato.models.loader import load_single_file
from sfumato.prompts.encode import Conditioning
from sfumato.request import build_request
from sfumato.sampling.denoiser import GuidedDenoiser, NegativeGuidanceSkip, UNetExtras
from sfumato.tasks.txt2img import generate


def cond(value: float) -> Conditioning:
    return Conditioning(cross=torch.full((1, 77, 4), float(value)))


class RecordingModel:
    """Output = the conditioning's id, so guidance is arithmetic on ids; records each call's batch."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x, sigma, conditioning, extras):
        self.batches.append(x.shape[0])
        return conditioning.cross.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + 0 * x


@pytest.mark.parametrize(
    ("step", "sigma", "all_steps", "skips"),
    [
        (1, 0.5, False, True),  # odd step below the sigma
        (2, 0.5, False, False),  # even step: A1111 alternates
        (2, 0.5, True, True),  # ... unless "all steps"
        (1, 1.5, True, False),  # above the sigma: never
        (1, 1.0, True, False),  # at the sigma: A1111 compares with "<"
    ],
)
def test_which_steps_skip(step, sigma, all_steps, skips):
    assert NegativeGuidanceSkip(1.0, all_steps).applies(step, sigma) is skips
    assert NegativeGuidanceSkip(0.0, True).applies(step, sigma) is False  # 0 is off


def test_skipped_steps_drop_the_negative_from_the_unet_batch_and_are_unguided():
    model = RecordingModel()
    sigmas = torch.tensor([3.0, 2.0, 0.9, 0.5, 0.0])
    guided = GuidedDenoiser(
        model,
        sigmas,
        lambda step: (cond(1), [(cond(3), 1.0)]),
        7.0,
        UNetExtras(),
        skip_negative=NegativeGuidanceSkip(1.0),
    )
    x = torch.zeros(1, 4, 2, 2)
    results = [float(guided(x, sigma.reshape(1))[0, 0, 0, 0]) for sigma in sigmas[:-1]]
    guided_value, unguided_value = 1 + 7 * (3 - 1), 3
    # Steps 0 and 1 are above sigma 1; step 2 is below but even; step 3 is odd and below: skipped.
    assert results == [guided_value, guided_value, guided_value, unguided_value]
    assert model.batches == [2, 2, 2, 1]


def test_with_and_parts_the_first_part_stands_in_for_the_negative():
    model = RecordingModel()
    parts = [(cond(3), 1.0), (cond(5), 0.5)]
    guided = GuidedDenoiser(
        model,
        torch.tensor([0.5, 0.0]),
        lambda step: (cond(1), parts),
        7.0,
        UNetExtras(),
        skip_negative=NegativeGuidanceSkip(1.0, all_steps=True),
    )
    out = guided(torch.zeros(1, 4, 2, 2), torch.tensor([0.5]))
    assert torch.allclose(out, torch.full((1, 4, 2, 2), 3 + 7 * 0.5 * (5 - 3)))
    assert model.batches == [2]


@pytest.fixture(scope="module")
def sd1(tiny_models):
    return load_single_file(tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float32)


def image(model, **fields) -> np.ndarray:
    request = build_request(
        prompt="a red circle", negative_prompt="blue", width=64, height=64, steps=4, seed=3
    )
    return np.asarray(generate(model, request.model_copy(update=fields)).images[0].image)


def test_skipping_every_step_equals_cfg_1_and_a_threshold_below_every_sigma_changes_nothing(sd1):
    everywhere = image(sd1, s_min_uncond=1e3, s_min_uncond_all=True)
    assert np.array_equal(everywhere, image(sd1, cfg_scale=1.0))
    assert np.array_equal(image(sd1, s_min_uncond=1e-4), image(sd1))
    assert not np.array_equal(image(sd1, s_min_uncond=1e3), image(sd1))  # odd steps: unguided


def params(**fields) -> dict:
    request = build_request(prompt="a cat", **fields)
    where = {"seed": 1, "subseed": 1, "width": 64, "height": 64, "model_name": None, "model_hash": None}
    return infotext_params(request.model_dump(), **where)


def test_infotext_records_ngms_and_reads_it_back():
    written = params(s_min_uncond=2.5, s_min_uncond_all=True)
    assert written["NGMS"] == 2.5 and written["NGMS all steps"] is True
    assert "NGMS" not in params() and "NGMS all steps" not in params(s_min_uncond_all=True)
    text = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, NGMS: 2.5, NGMS all steps: True"
    fields = request_fields_from_infotext(parse(text))
    assert fields["s_min_uncond"] == 2.5 and fields["s_min_uncond_all"] is True
