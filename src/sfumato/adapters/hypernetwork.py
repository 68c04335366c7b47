"""A1111 hypernetworks: small MLPs that rewrite the attention layers' keys and values inputs.

File (`models/hypernetworks/*.pt`, read with torch's weights-only unpickler): for each width it
applies to (the attention's context width: 768 for SD1 cross-attention, 320/640/1280 for its
self-attention), a pair of state dicts `(k, v)` of a `linear` Sequential, plus `layer_structure`
([1, 2, 1] = width → 2·width → width), `activation_func`, `is_layer_norm`, `activate_output`,
`use_dropout`/`dropout_structure` and `last_layer_dropout`. Each module maps x ↦ x + mlp(x)·strength;
the k module feeds the attention's key projection and the v module its value projection, in self- and
cross-attention alike, several hypernetworks one after another (A1111's order of the tags).

The Sequential is rebuilt from the state dict's own indices: a 2-D `weight` is a Linear, a 1-D one a
LayerNorm, and a slot without parameters right after a Linear is the activation when that layer has
one (else, like every other empty slot, a dropout, which does nothing at inference). That reads every
layout A1111's options produce without re-deriving its dropout bookkeeping.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sfumato.errors import ModelFileError
from sfumato.models.files import load_pickled_object

ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    **{
        name.lower(): cls
        for name, cls in inspect.getmembers(nn.modules.activation, inspect.isclass)
        if cls.__module__ == "torch.nn.modules.activation"
    },
    "linear": None,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,  # A1111's name for it
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class HypernetworkModule(nn.Module):
    """x ↦ x + linear(x) · multiplier."""

    def __init__(self, linear: nn.Sequential) -> None:
        super().__init__()
        self.linear = linear
        self.multiplier = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x.to(next(self.linear.parameters()).dtype)).to(x.dtype) * self.multiplier


def _sequential(
    state: dict[str, torch.Tensor], activation: type[nn.Module] | None, activate_output: bool
) -> nn.Sequential:
    indices = sorted({int(key.split(".")[1]) for key in state if key.startswith("linear.")})
    if not indices:
        raise ValueError("no layers")
    linears = [i for i in indices if state[f"linear.{i}.weight"].dim() == 2]
    layers: list[nn.Module] = []
    for index in range(max(indices) + 1):
        weight = state.get(f"linear.{index}.weight")
        if weight is not None and weight.dim() == 2:
            layer: nn.Module = nn.Linear(weight.shape[1], weight.shape[0])
        elif weight is not None:
            layer = nn.LayerNorm(weight.shape[0])
        elif (
            index - 1 in linears and activation is not None and (index - 1 != linears[-1] or activate_output)
        ):
            layer = activation()
        else:
            layer = nn.Identity()  # a dropout slot: nothing at inference
        layers.append(layer)
    sequential = nn.Sequential(*layers)
    sequential.load_state_dict(
        {k.removeprefix("linear."): v for k, v in state.items() if k.startswith("linear.")}
    )
    return sequential


@dataclass
class Hypernetwork:
    path: Path
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]]

    @property
    def name(self) -> str:
        return self.path.stem

    def to(self, device: torch.device) -> Hypernetwork:
        for k, v in self.layers.values():
            k.to(device)
            v.to(device)
        return self

    def set_multiplier(self, multiplier: float) -> None:
        for k, v in self.layers.values():
            k.multiplier = v.multiplier = multiplier


def load_hypernetwork(path: Path) -> Hypernetwork:
    """Read an A1111 hypernetwork file; a file of another kind is one clear ModelFileError."""
    data = load_pickled_object(path)
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: not an A1111 hypernetwork (holds a {type(data).__name__})")
    name = str(data.get("activation_func") or "linear").lower()
    if name not in ACTIVATIONS:
        raise ModelFileError(f"{path}: unknown hypernetwork activation {name!r}")
    activate_output = bool(data.get("activate_output", False))
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = {}
    for width, pair in data.items():
        if not isinstance(width, int):
            continue
        try:
            k, v = (
                HypernetworkModule(_sequential(dict(s), ACTIVATIONS[name], activate_output)).eval()
                for s in pair
            )
        except (TypeError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelFileError(f"{path}: the layers for width {width} cannot be read ({exc})") from exc
        layers[width] = (k, v)
    if not layers:
        raise ModelFileError(f"{path}: not an A1111 hypernetwork (no layers by width)")
    return Hypernetwork(path, layers)
