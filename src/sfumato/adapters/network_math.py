"""ΔW of one layer for each network kind, at multiplier 1.

LoRA/LoCon (with or without a Tucker mid), LoHa and LoKr go through `lycoris.functional`, the LyCORIS
authors' own maths; (IA)³ and full/diff are one line each and written here. Scales follow the file
format (A1111 and kohya agree): alpha / rank where the file stores an alpha, else 1.
"""

from __future__ import annotations

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
