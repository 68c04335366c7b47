"""Exponential moving average of the trained weights.

    shadow ← d·shadow + (1 − d)·param,   d = min(decay, (1 + n) / (10 + n)) with warmup, else decay

where n counts updates so far (the warmup of TensorFlow's ExponentialMovingAverage: early averages follow
the weights closely instead of remembering the random initialisation for thousands of steps).

Ours rather than diffusers' `EMAModel` because the trainer needs two things it does not give directly:
an exact in-place swap (`swapped`) so that sampling and exporting with EMA weights needs no second
copy of the model (one parameter's temporary at a time) and leaves the training weights bit-identical,
and a tensors-only state for safetensors checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class EMA:
    """A shadow copy of `parameters` (in their dtype and device), updated after each optimizer step."""

    def __init__(
        self, parameters: Iterable[nn.Parameter], decay: float = 0.9999, warmup: bool = True
    ) -> None:
        self.parameters = list(parameters)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in self.parameters]

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move each shadow towards its parameter: shadow += (1 − d)(param − shadow)."""
        weight = 1.0 - self.current_decay()
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            shadow.lerp_(param.detach().to(shadow.dtype), weight)
        self.num_updates += 1

    @torch.no_grad()
    def _swap(self) -> None:
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            saved = param.detach().clone()
            param.copy_(shadow)
            shadow.copy_(saved)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside, the parameters hold the EMA weights; on exit both are swapped back exactly."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def state_dict(self) -> dict[str, Tensor]:
        """Shadows by position, plus the update count (a 0-d tensor, so the state is tensors only).
        Contiguous, as safetensors wants: shadows keep their parameters' memory format (channels_last)."""
        state = {f"shadow.{i}": s.contiguous() for i, s in enumerate(self.shadow)}
        state["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if len(state) - 1 != len(self.shadow):
            raise ValueError(f"EMA state has {len(state) - 1} tensors, expected {len(self.shadow)}")
        for i, shadow in enumerate(self.shadow):
            shadow.copy_(state[f"shadow.{i}"])
        self.num_updates = int(state["num_updates"])
