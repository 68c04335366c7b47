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


def a1111_hypernetwork(
    widths: list[int],
    *,
    layer_structure: tuple[float, ...] = (1, 2, 1),
    activation: str = "relu",
    layer_norm: bool = True,
    dropout: tuple[float, ...] | None = (0, 0.3, 0),
    activate_output: bool = False,
    seed: int = 0,
) -> dict[Any, Any]:
    """An A1111 hypernetwork's saved dict, its `linear` Sequentials numbered as A1111 builds them:
    per layer a Linear, then the activation (not after the last Linear unless `activate_output`),
    a LayerNorm if `layer_norm`, a Dropout where `dropout` says."""
    generator = torch.Generator().manual_seed(seed)
    data: dict[Any, Any] = {}
    for width in widths:
        pair = []
        for _ in range(2):
            state: dict[str, torch.Tensor] = {}
            index = 0
            for i in range(len(layer_structure) - 1):
                fan_in, fan_out = int(width * layer_structure[i]), int(width * layer_structure[i + 1])
                state[f"linear.{index}.weight"] = (
                    torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5
                )
                state[f"linear.{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
                index += 1
                if activation != "linear" and (i < len(layer_structure) - 2 or activate_output):
                    index += 1
                if layer_norm:
                    state[f"linear.{index}.weight"] = 1 + torch.randn(fan_out, generator=generator) * 0.1
                    state[f"linear.{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
                    index += 1
                if dropout is not None and dropout[i + 1] > 0:
                    index += 1
            pair.append(state)
        data[width] = tuple(pair)
    data |= {
        "step": 100, "name": "tiny", "layer_structure": list(layer_structure), "activation_func": activation,
        "is_layer_norm": layer_norm, "weight_initialization": "Normal", "use_dropout": dropout is not None,
        "dropout_structure": list(dropout) if dropout else None, "activate_output": activate_output,
        "last_layer_dropout": False, "sd_checkpoint": None, "sd_checkpoint_name": None,
    }  # fmt: skip
    return data
