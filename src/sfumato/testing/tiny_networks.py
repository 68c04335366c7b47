"""Random LoRA/LyCORIS files for a tiny model, in the key layouts trainers write, for tests.

`kohya_lora` writes what sd-scripts writes: `lora_unet_…` (diffusers module names for SD1/SD2, the
original LDM names for SDXL, as sd-scripts' SDXL UNet is the original one), `lora_te_…` or
`lora_te1_…`/`lora_te2_…`, `.lora_down.weight`/`.lora_up.weight`/`.alpha`, `ss_*` metadata. Targets
are sd-scripts' defaults: the UNet's transformer blocks (attention, feed-forward, proj_in/out) and the
text encoders' attention and MLP layers; `conv=True` adds the ResNet convolutions (LoCon).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from sfumato.models.ldm_export import unet_to_ldm

Layers = dict[str, nn.Linear | nn.Conv2d]


def unet_layers(unet: nn.Module, *, conv: bool = False) -> Layers:
    """sd-scripts' default UNet targets (diffusers names)."""
    layers: Layers = {}
    for name, module in unet.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        if ".attentions." in name or (conv and ".resnets." in name and name.endswith(("conv1", "conv2"))):
            layers[name] = module
    return layers


def text_layers(encoder: nn.Module) -> Layers:
    """sd-scripts' text-encoder targets, named without transformers' optional `text_model.` level."""
    return {
        name.removeprefix("text_model."): module
        for name, module in encoder.named_modules()
        if isinstance(module, nn.Linear) and (".self_attn." in name or ".mlp." in name)
    }


def lora_pair(
    module: nn.Linear | nn.Conv2d, rank: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) shaped as kohya stores them: Linear (r, in)/(out, r); Conv (r, in, k, k)/(out, r, 1, 1)."""
    weight = module.weight
    if weight.dim() == 4:
        out_ch, in_ch, kh, kw = weight.shape
        down = torch.randn(rank, in_ch, kh, kw, generator=generator) / (in_ch * kh * kw) ** 0.5
        up = torch.randn(out_ch, rank, 1, 1, generator=generator) * 0.3
    else:
        out_ch, in_ch = weight.shape
        down = torch.randn(rank, in_ch, generator=generator) / in_ch**0.5
        up = torch.randn(out_ch, rank, generator=generator) * 0.3
    return down, up


def kohya_names(components: Any, *, conv: bool = False) -> dict[str, nn.Linear | nn.Conv2d]:
    """kohya key prefix -> module, for a TinyComponents (or anything with unet/text_encoder[_2])."""
    sdxl = getattr(components, "text_encoder_2", None) is not None
    unet = unet_layers(components.unet, conv=conv)
    if sdxl:  # sd-scripts' SDXL UNet has the original LDM names
        ldm = unet_to_ldm({f"{n}.weight": n for n in unet}, components.unet.config)  # type: ignore[arg-type]
        renamed = {diffusers: key.removesuffix(".weight") for key, diffusers in ldm.items()}
        names = {f"lora_unet_{renamed[n].replace('.', '_')}": m for n, m in unet.items()}
    else:
        names = {f"lora_unet_{n.replace('.', '_')}": m for n, m in unet.items()}
    encoders = [components.text_encoder] + ([components.text_encoder_2] if sdxl else [])
    for number, encoder in enumerate(encoders):
        prefix = f"lora_te{number + 1}_" if sdxl else "lora_te_"
        names |= {f"{prefix}text_model_{n.replace('.', '_')}": m for n, m in text_layers(encoder).items()}
    return names


def kohya_lora(
    components: Any, *, rank: int = 4, alpha: float | None = 2.0, seed: int = 0, conv: bool = False
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in kohya_names(components, conv=conv).items():
        down, up = lora_pair(module, rank, generator)
        tensors[f"{prefix}.lora_down.weight"] = down
        tensors[f"{prefix}.lora_up.weight"] = up
        if alpha is not None:
            tensors[f"{prefix}.alpha"] = torch.tensor(float(alpha))
    return tensors


def write_network(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None
) -> None:
    """A safetensors network file with kohya-style `ss_*` metadata (all values strings)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
