"""ΔW of one layer for each network kind, and the in-place update that adds it.

LoRA/LoCon (with or without a Tucker mid), LoHa and LoKr go through `lycoris.functional`, the LyCORIS
authors' own maths; (IA)³ and full/diff are one line each and written here. Scales follow the file
format (A1111 and kohya agree): alpha / rank where the file stores an alpha, else 1.

A plain LoRA layer (the common case by far) is added without ever making ΔW: the weight, viewed as a
matrix, takes `addmm_(up, down)` in place, which on the full-size SD1.5 UNet halves the time to apply a
LoRA and needs no weight-sized temporary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lycoris.functional import locon, loha, lokr

from sfumato.adapters.network_files import LayerRecord


class ShapeMismatch(ValueError):
    """The layer's tensors do not fit the model's weight (a network for another model)."""


def _scale(record: LayerRecord) -> float:
    alpha, rank = record.alpha, record.rank
    return alpha / rank if alpha is not None and rank else 1.0


def _get(record: LayerRecord, role: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    tensor = record.tensors.get(role)
    return None if tensor is None else tensor.to(device=device, dtype=dtype)


def layer_delta(record: LayerRecord, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ΔW shaped like `weight`, Δbias or None), computed in float32 on the weight's device."""
    t = record.tensors
    f32, device = torch.float32, weight.device
    kind = record.kind

    def get(role: str) -> torch.Tensor | None:
        return _get(record, role, f32, device)

    bias = None
    if kind == "lora":
        delta = locon.diff_weight(get("down"), get("up"), get("mid"), gamma=_scale(record), backend="torch")
    elif kind == "loha":
        delta = loha.diff_weight(
            get("hada_w1_b"), get("hada_w1_a"), get("hada_w2_b"), get("hada_w2_a"),
            get("hada_t1"), get("hada_t2"), gamma=_scale(record), backend="torch",
        )  # fmt: skip
    elif kind == "lokr":
        alpha = record.alpha
        rank = record.rank
        delta = lokr.diff_weight(
            get("lokr_w1"), get("lokr_w1_a"), get("lokr_w1_b"), get("lokr_w2"), get("lokr_w2_a"),
            get("lokr_w2_b"), get("lokr_t2"),
            gamma=alpha if alpha is not None and rank else float(rank or 1), backend="torch",
        )  # fmt: skip
    elif kind == "ia3":
        vector = get("ia3")
        assert vector is not None
        on_input = "on_input" in t and bool(t["on_input"].reshape(-1)[0])
        shape = [1, -1] if on_input else [-1, 1]
        delta = weight.to(f32) * vector.reshape(*shape, *[1] * (weight.dim() - 2))
    elif kind == "full":
        delta = get("diff")
        bias = get("diff_b")
    else:
        raise ShapeMismatch(f"{record.layer}: unsupported network tensors {sorted(t)}")
    assert delta is not None
    if delta.numel() != weight.numel():
        raise ShapeMismatch(f"{record.layer}: {tuple(delta.shape)} does not fit {tuple(weight.shape)}")
    return delta.reshape(weight.shape), bias


@dataclass(frozen=True)
class LayerUpdate:
    """One layer's change, checked against the layer's shapes, ready to be added in place."""

    scale: float
    low_rank: tuple[torch.Tensor, torch.Tensor] | None = None  # (up, down) as matrices
    delta: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def add_to(self, module: torch.nn.Module, multiplier: float) -> None:
        weight = module.weight
        with torch.no_grad():
            if self.low_rank is not None:
                up, down = self.low_rank
                flat = weight.view(weight.shape[0], -1)
                flat.addmm_(up.to(weight.dtype), down.to(weight.dtype), alpha=self.scale * multiplier)
            else:
                assert self.delta is not None
                weight.add_(self.delta.to(weight.dtype), alpha=multiplier)
            if self.bias is not None and module.bias is not None:
                module.bias.add_(self.bias.to(weight.dtype), alpha=multiplier)


def layer_update(record: LayerRecord, weight: torch.Tensor) -> LayerUpdate:
    """The update for one layer; a ShapeMismatch when the file's tensors do not fit the weight."""
    if record.kind == "lora" and "mid" not in record.tensors:
        down, up = record.tensors["down"], record.tensors["up"]
        rank = down.shape[0]
        matrices = (
            up.to(weight.device, torch.float32).reshape(up.shape[0], rank),
            down.to(weight.device, torch.float32).reshape(rank, -1),
        )
        if (matrices[0].shape[0], matrices[1].shape[1]) != (weight.shape[0], weight[0].numel()):
            raise ShapeMismatch(
                f"{record.layer}: rank-{rank} {tuple(up.shape)}·{tuple(down.shape)} does not fit {tuple(weight.shape)}"
            )
        return LayerUpdate(_scale(record), low_rank=matrices)
    delta, bias = layer_delta(record, weight)
    return LayerUpdate(1.0, delta=delta, bias=bias)
