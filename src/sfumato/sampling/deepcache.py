"""DeepCache (Ma et al. 2023): an opt-in approximation that runs the whole UNet only every N-th sampler
step and, on the steps between, only its shallowest branch (conv_in → down_blocks[0] → up_blocks[-1] →
conv_out), reusing the deep features (up_blocks[-2]'s output) of the last full step. This is the
paper's "uniform" schedule with branch 0: high-level features change slowly from one step to the next,
so the steps between cost a fraction of a full one for a small change in the image.

Our own code because no maintained library does this for a bare UNet under our own sampler loop (the
`deepcache` package wraps diffusers pipelines and their scheduler loop). diffusers' monolithic forward
still runs; forward wrappers on down_blocks[1:], mid_block and up_blocks[:-1] record their outputs on
a full call and, on a reuse call, return the recorded ones without computing anything. The wrappers
exist only inside the `with` block.

Steps, not UNet calls: a model call belongs to the sampler step whose sigma interval holds its sigma
(`step_index`, as prompt schedules count), and step i is full when i % N == 0. A reuse call replays
the recorded call at the same position in its step with the same input shape, so batched CFG (one
call a step), prompts of different lengths (a call each) and two-evaluation samplers (Heun's second
evaluation is at the next step's sigma, so it counts to that step) each replay their own counterpart;
a call with none (the first reuse step of Heun, NGMS dropping the negative's half) runs in full.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from sfumato.prompts.encode import Conditioning
from sfumato.sampling.denoiser import ModelCall, UNetExtras, step_index


class DeepCache:
    """`model` (a call into `unet`) with DeepCache every `interval` steps of the schedule `sigmas`;
    use it inside `with` (that installs and then removes the wrappers)."""

    def __init__(
        self, model: ModelCall, unet: UNet2DConditionModel, interval: int, sigmas: torch.Tensor
    ) -> None:
        if interval < 2:
            raise ValueError("a DeepCache interval below 2 would never reuse anything")
        self.model = model
        self.interval = interval
        self.sigmas = sigmas.float().cpu()
        self.deep: list[torch.nn.Module] = [*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]]
        self._recorded: dict[tuple[int, tuple[int, ...]], list[Any]] = {}
        self._replaying: list[Any] | None = None
        self._recording: list[Any] | None = None
        self._step = -1
        self._position = 0
        self._saved: list[Callable[..., Any] | None] = []

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, extras: UNetExtras
    ) -> torch.Tensor:
        step = step_index(self.sigmas, sigma)
        self._position = self._position + 1 if step == self._step else 0
        self._step = step
        key = (self._position, tuple(x.shape))
        replay = self._recorded.get(key) if step % self.interval else None
        self._replaying, self._recording = replay, None if replay is not None else [None] * len(self.deep)
        try:
            out = self.model(x, sigma, cond, extras)
        finally:
            recorded, self._replaying, self._recording = self._recording, None, None
        if recorded is not None:
            self._recorded[key] = recorded
        return out

    def _wrapper(self, index: int, compute: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if self._replaying is not None:
                return self._replaying[index]
            out = compute(*args, **kwargs)
            if self._recording is not None:
                self._recording[index] = out
            return out

        return forward

    def __enter__(self) -> DeepCache:
        self._saved = [block.__dict__.get("forward") for block in self.deep]  # e.g. accelerate's hooks
        for index, block in enumerate(self.deep):
            block.forward = self._wrapper(index, block.forward)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for block, saved in zip(self.deep, self._saved, strict=True):
            if saved is None:
                del block.forward
            else:
                block.forward = saved
        self._recorded.clear()
