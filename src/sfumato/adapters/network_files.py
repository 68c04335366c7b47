"""Reading LoRA / LyCORIS files into per-layer records, whatever dialect wrote them.

Keys are `<layer><suffix>`: the layer in one of the dialects `adapters.targets` resolves, the suffix
naming the tensor's role. kohya/LyCORIS suffixes (`.lora_down.weight`, `.hada_w1_a`, `.lokr_w1`, …)
follow a layer name without dots; diffusers/PEFT suffixes (`.lora_A.weight`, `.lora.down.weight`,
old attention-processor `…processor.to_q_lora.down.weight`) follow a dotted one. Each layer's tensors
become one `LayerRecord` whose `kind` says which maths applies (`adapters.network_math`).

Files load through our safe reader (lazy safetensors; `.pt`/`.ckpt` only with weights_only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sfumato.errors import ModelFileError
from sfumato.models.files import LazyStateDict, open_state_dict

# role suffix -> canonical role; the longest suffix wins (".lora_down.weight" before ".weight")
_ROLES = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "lora_mid.weight": "mid",
    "lora_A.weight": "down",
    "lora_B.weight": "up",
    "lora.down.weight": "down",
    "lora.up.weight": "up",
    "lora_linear_layer.down.weight": "down",
    "lora_linear_layer.up.weight": "up",
    "alpha": "alpha",
    "dora_scale": "dora_scale",
    **{f"hada_{n}": f"hada_{n}" for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f"lokr_{n}": f"lokr_{n}" for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")},
    "on_input": "on_input",
    "diff": "diff",
    "diff_b": "diff_b",
    "w_norm": "w_norm",
    "b_norm": "b_norm",
    "weight": "ia3",
}
_SUFFIXES = sorted(_ROLES, key=len, reverse=True)
# diffusers' old attention-processor LoRA: attn1.processor.to_q_lora.down.weight -> attn1.to_q
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


@dataclass
class LayerRecord:
    """One layer's tensors from a network file, by role."""

    layer: str  # the name as the file spells it
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        roles = set(self.tensors)
        if {"down", "up"} <= roles:
            return "lora"
        if any(role.startswith("hada_") for role in roles):
            return "loha"
        if any(role.startswith("lokr_") for role in roles):
            return "lokr"
        if "diff" in roles:
            return "full"
        if "ia3" in roles:
            return "ia3"
        return "unsupported"

    @property
    def rank(self) -> int | None:
        for role, axis in (("down", 0), ("hada_w1_b", 0), ("lokr_w1_b", 0), ("lokr_w2_b", 0)):
            if role in self.tensors:
                return int(self.tensors[role].shape[axis])
        return None

    @property
    def alpha(self) -> float | None:
        alpha = self.tensors.get("alpha")
        return None if alpha is None else float(alpha.float().reshape(-1)[0])


def _split(key: str) -> tuple[str, str] | None:
    """(layer, role) of one key, or None for a key that names no network tensor."""
    match = _PROCESSOR.search(key)
    if match:
        projection = "to_out.0" if match.group(1) == "to_out" else match.group(1)
        return key[: match.start()] + "." + projection, match.group(2)
    for suffix in _SUFFIXES:
        if key.endswith("." + suffix):
            layer = key[: -len(suffix) - 1]
            if suffix == "weight" and not layer.startswith("lora_"):
                return None  # a plain weight outside kohya naming is not an (IA)³ vector
            return layer, _ROLES[suffix]
    return None


@dataclass
class NetworkFile:
    """A parsed network file: its layers, metadata and what we could not place."""

    path: Path
    layers: dict[str, LayerRecord]
    metadata: dict[str, str]
    ignored_keys: list[str]

    @property
    def name(self) -> str:
        return self.path.stem

    def kinds(self) -> set[str]:
        return {record.kind for record in self.layers.values()}

    def rank(self) -> int | None:
        ranks = [r for r in (record.rank for record in self.layers.values()) if r is not None]
        return max(ranks) if ranks else None

    def alpha(self) -> float | None:
        alphas = [a for a in (record.alpha for record in self.layers.values()) if a is not None]
        return max(alphas) if alphas else None


def read_network(path: Path) -> NetworkFile:
    """Parse a LoRA/LyCORIS file; a file with no network tensor at all is a ModelFileError."""
    state = open_state_dict(path)
    metadata: dict[str, Any] = state.metadata if isinstance(state, LazyStateDict) else {}
    layers: dict[str, LayerRecord] = {}
    ignored: list[str] = []
    for key in state:
        split = _split(key)
        if split is None:
            ignored.append(key)
            continue
        layer, role = split
        layers.setdefault(layer, LayerRecord(layer)).tensors[role] = state[key]
    if not any(record.kind != "unsupported" for record in layers.values()):
        raise ModelFileError(f"{path}: not a LoRA or LyCORIS file (no network tensors found)")
    return NetworkFile(path, layers, dict(metadata), ignored)


def family_of(network: NetworkFile) -> str | None:
    """SD1, SD2 or SDXL: from the training metadata, else from the layer names and widths."""
    base = (
        network.metadata.get("ss_base_model_version") or network.metadata.get("modelspec.architecture") or ""
    ).lower()
    if "xl" in base:
        return "sdxl"
    if "v2" in base or "sd_2" in base or "stable-diffusion-v2" in base:
        return "sd2"
    if "v1" in base or "stable-diffusion-v1" in base:
        return "sd1"
    layers = network.layers
    if any(layer.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for layer in layers):
        return "sdxl"
    for layer, record in layers.items():
        if layer.endswith(("attn2_to_k", "attn2.to_k")) and "down" in record.tensors:
            width = int(record.tensors["down"].shape[1])
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width)
    return None
