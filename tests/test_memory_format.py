"""The UNet/VAE memory layout: by measured default on CPU, channels_last for the VAE, and for the UNet
with half-precision compute."""

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
    ("device", "dtype", "setting", "network", "expected"),
    [
        ("cpu", torch.bfloat16, None, "unet", True),
        ("cpu", torch.float16, None, "unet", True),
        ("cpu", torch.float32, None, "unet", False),
        ("cpu", torch.float32, None, "vae", True),
        ("cuda", torch.float16, None, "unet", False),
        ("cuda", torch.float32, None, "vae", False),
        ("cpu", torch.float32, True, "unet", True),
        ("cpu", torch.bfloat16, False, "unet", False),
        ("cpu", torch.float32, False, "vae", False),
    ],
)
def test_default_by_network_device_and_dtype(device, dtype, setting, network, expected):
    assert wants_channels_last(torch.device(device), dtype, setting, network) is expected


def test_loaded_layout_follows_the_choice_and_pixels_agree(tiny_models):
    path = tiny_models["sd1"][0]
    half = load_checkpoint(path, device=CPU, dtype=torch.bfloat16)
    assert is_channels_last(half.unet) and is_channels_last(half.vae.decoder)
    default = load_checkpoint(path, device=CPU, dtype=torch.float32)
    assert not is_channels_last(default.unet) and is_channels_last(default.vae.decoder)
    nchw = load_checkpoint(path, device=CPU, dtype=torch.float32, channels_last=False)
    nhwc = load_checkpoint(path, device=CPU, dtype=torch.float32, channels_last=True)
    assert not is_channels_last(nchw.vae.decoder) and is_channels_last(nhwc.unet)
    request = build_request(prompt="a red circle", width=64, height=64, steps=3, seed=2, sampler_name="Euler")
    images = [np.asarray(generate(m, request).images[0].image, dtype=np.int16) for m in (nchw, default, nhwc)]
    for image in images[1:]:  # the same networks; only the summation order may differ
        assert np.abs(image - images[0]).max() <= 1
