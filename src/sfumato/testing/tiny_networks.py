"""Random LoRA/LyCORIS files for a tiny model, in the key layouts trainers write, for tests.

`kohya_lora` writes what sd-scripts writes (layers and names: `adapters.kohya_names`),
`.lora_down.weight`/`.lora_up.weight`/`.alpha`, with `ss_*` metadata; `conv=True` adds the ResNet
convolutions (LoCon).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from sfumato.adapters.kohya_names import kohya_layers


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
    encoders = [components.text_encoder]
    if getattr(components, "text_encoder_2", None) is not None:
        encoders.append(components.text_encoder_2)
    return kohya_layers(components.unet, encoders, conv=conv)


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
