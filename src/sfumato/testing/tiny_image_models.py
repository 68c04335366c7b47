"""Tiny random-weight image models (ESRGAN, Real-ESRGAN, LaMa) written in the file layouts people
download, for tests of the upscaler and object-removal paths.

- ESRGAN's original layout (`model.0.weight`, `model.1.sub.N.RDB1.conv1.0.weight` …), as the
  ESRGAN/"4x-UltraSharp"-style `.pth` files keep it;
- BasicSR's RRDBNet layout (`conv_first`, `body.N.rdb1.conv1`, `conv_body`, `conv_up1/2`, `conv_hr`,
  `conv_last`) under `params_ema`, as Real-ESRGAN's `RealESRGAN_x4plus.pth` keeps it;
- LaMa (big-lama's architecture, full size: it has no size options) as a `generator.model.*` state dict.
"""

from __future__ import annotations

import os
import re
from typing import Literal

import torch
from safetensors.torch import save_file

from sfumato.upscalers.spandrel_import import import_spandrel

EsrganLayout = Literal["esrgan", "realesrgan"]


def build_esrgan(num_filters: int = 8, num_blocks: int = 1, scale: int = 4, seed: int = 0) -> torch.nn.Module:
    """A small RRDB network (ESRGAN's architecture, narrow and shallow), random but deterministic."""
    spandrel = import_spandrel()
    torch.manual_seed(seed)
    network = spandrel.architectures.ESRGAN.ESRGAN(
        in_nc=3, out_nc=3, num_filters=num_filters, num_blocks=num_blocks, scale=scale
    )
    with torch.no_grad():  # ESRGAN's init (x0.1) gives a near-constant picture: widen it so that
        for parameter in network.parameters():  # the output follows the input (~7 % clipped)
            parameter.mul_(2.0)
    return network.eval()


def _basicsr_key(key: str, num_blocks: int) -> str:
    """ESRGAN's original key -> BasicSR RRDBNet's (scale 4: two nearest-upsample convs)."""
    fixed = {"model.0": "conv_first", f"model.1.sub.{num_blocks}": "conv_body", "model.3": "conv_up1"}
    fixed |= {"model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}
    prefix, _, leaf = key.rpartition(".")
    if prefix in fixed:
        return f"{fixed[prefix]}.{leaf}"
    match = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(\w+)", key)
    assert match, key
    block, rdb, conv, leaf = match.groups()
    return f"body.{block}.rdb{rdb}.conv{conv}.{leaf}"


def esrgan_state_dict(network: torch.nn.Module, layout: EsrganLayout) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}
    if layout == "esrgan":
        return state
    blocks = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("model.1.sub.") and ".RDB" in k)
    return {_basicsr_key(k, blocks): v for k, v in state.items()}


def write_esrgan(
    path: str | os.PathLike[str], network: torch.nn.Module, layout: EsrganLayout = "esrgan"
) -> None:
    """`.safetensors` as is; `.pth` pickled, Real-ESRGAN's wrapped under `params_ema` as released."""
    state = esrgan_state_dict(network, layout)
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save({"params_ema": state} if layout == "realesrgan" else state, str(path))


def build_lama(seed: int = 0) -> torch.nn.Module:
    spandrel = import_spandrel()
    torch.manual_seed(seed)
    return spandrel.architectures.LaMa.LaMa(in_nc=4, out_nc=3).eval()


def write_lama(path: str | os.PathLike[str], network: torch.nn.Module) -> None:
    """LaMa's generator weights under `generator.model.*` (as big-lama's checkpoint names them), fp16."""
    state = {
        k.replace("model.model.", "generator.model.", 1): v.detach().half().contiguous()
        if v.is_floating_point()
        else v.detach().contiguous()
        for k, v in network.state_dict().items()
    }
    save_file(state, str(path))


def build_swinir(scale: int = 2, seed: int = 0) -> torch.nn.Module:
    """A one-block SwinIR (a transformer upscaler with windowed attention), random but deterministic."""
    spandrel = import_spandrel()
    torch.manual_seed(seed)
    return spandrel.architectures.SwinIR.SwinIR(
        img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2.0,
        upscale=scale, upsampler="pixelshuffle", resi_connection="1conv",
    ).eval()  # fmt: skip
