"""The UNet/VAE memory layout: channels_last by measured default for half precision on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfumato.models.loader import load_checkpoint
from sfumato.models.memory_format import wants_channels_last
from sfumato.request import build_request
from sfumato.tasks.txt2img import generate

CPU = torch.device("cpu")


def is_channels_last(module: torch.nn.Module) -> bool:
    weight = module.conv_in.weight
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@pytest.mark.parametrize(
    ("device", "dtype", "setting", "expected"),
    [
        ("cpu", torch.bfloat16, None, True),
        ("cpu", torch.float16, None, True),
        ("cpu", torch.float32, None, False),
        ("cuda", torch.float16, None, False),
        ("cpu", torch.float32, True, True),
        ("cpu", torch.bfloat16, False, False),
    ],
)
def test_default_by_device_and_dtype(device, dtype, setting, expected):
    assert wants_channels_last(torch.device(device), dtype, setting) is expected


def test_loaded_layout_follows_the_choice_and_pixels_agree(tiny_models):
    path = tiny_models["sd1"][0]
    half = load_checkpoint(path, device=CPU, dtype=torch.bfloat16)
    assert is_channels_last(half.unet) and is_channels_last(half.vae.decoder)
    plain = load_checkpoint(path, device=CPU, dtype=torch.float32)
    nhwc = load_checkpoint(path, device=CPU, dtype=torch.float32, channels_last=True)
    assert not is_channels_last(plain.unet) and is_channels_last(nhwc.unet)
    request = build_request(prompt="a red circle", width=64, height=64, steps=3, seed=2, sampler_name="Euler")
    a, b = (np.asarray(generate(m, request).images[0].image, dtype=np.int16) for m in (plain, nhwc))
    assert np.abs(a - b).max() <= 1  # the same network; only the summation order may differ
