"""The denoiser stack: the UNet seen as a function (x, sigma) -> predicted clean latent.

Layer 1, `ModelDenoiser`, turns a discrete-time eps- or v-prediction UNet into a sigma-space denoiser
(Karras et al. 2022 scalings: c_in = 1/sqrt(sigma²+1); eps: x0 = x - sigma·eps; v: x0 = c_skip·x + c_out·v).
Layer 2, `GuidedDenoiser`, adds classifier-free guidance and asks a conditioning schedule for the
conditioning of the current step, which is how prompt editing and alternation plug in. Later layers
(ControlNet residuals, inpaint masks, regional prompts) wrap or extend these without touching samplers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sfumato.prompts.encode import Conditioning
from sfumato.sampling.discrete import DiscreteSchedule


@dataclass
class UNetExtras:
    """Per-image inputs the UNet needs besides text: SDXL's size/crop ids (batch × 6)."""

    time_ids: torch.Tensor | None = None


class ModelDenoiser:
    """eps/v-prediction UNet -> x0 prediction in sigma space."""

    def __init__(self, unet: torch.nn.Module, schedule: DiscreteSchedule, prediction: str) -> None:
        self.unet = unet
        self.schedule = schedule
        self.prediction = prediction

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, extras: UNetExtras
    ) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        sigma_b = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        c_in = 1.0 / (sigma_b**2 + 1.0) ** 0.5
        timestep = self.schedule.sigma_to_t(sigma.float().cpu()).to(x.device)
        added = None
        if cond.pooled is not None:
            added = {"text_embeds": cond.pooled.to(dtype), "time_ids": extras.time_ids.to(dtype)}
        out = self.unet(
            (x * c_in).to(dtype),
            timestep,
            encoder_hidden_states=cond.cross.to(dtype),
            added_cond_kwargs=added,
        ).sample.to(x.dtype)
        if self.prediction == "v_prediction":
            return x / (sigma_b**2 + 1.0) - out * sigma_b / (sigma_b**2 + 1.0) ** 0.5
        return x - out * sigma_b


ConditioningAt = Callable[[int], tuple[Conditioning, Conditioning]]
"""Given a step index, the (negative, positive) conditioning for the whole batch at that step."""


class GuidedDenoiser:
    """Classifier-free guidance over a per-step conditioning schedule: x0 = u + scale·(c − u).

    The step a model call belongs to is found from its sigma (the last schedule sigma at or above it),
    so multi-evaluation samplers (Heun, DPM2) see the conditioning of the step they are in.
    """

    def __init__(
        self,
        model: ModelDenoiser,
        sigmas: torch.Tensor,
        conditioning_at: ConditioningAt,
        cfg_scale: float,
        extras: UNetExtras,
    ) -> None:
        self.model = model
        self.sigmas = sigmas.float().cpu()
        self.conditioning_at = conditioning_at
        self.cfg_scale = cfg_scale
        self.extras = extras

    def step_for(self, sigma: torch.Tensor) -> int:
        value = float(sigma.reshape(-1)[0])
        above = int((self.sigmas[:-1] >= value * (1 - 1e-6)).sum().item())
        return max(0, min(above - 1, len(self.sigmas) - 2))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        uncond, cond = self.conditioning_at(self.step_for(sigma))
        if self.cfg_scale == 1.0:
            return self.model(x, sigma, cond, self.extras)
        if uncond.cross.shape[1] == cond.cross.shape[1]:
            both = Conditioning.batch([uncond, cond])
            extras = UNetExtras(None if self.extras.time_ids is None else self.extras.time_ids.repeat(2, 1))
            out_uncond, out_cond = self.model(
                torch.cat([x, x]), torch.cat([sigma, sigma]), both, extras
            ).chunk(2)
        else:  # different chunk counts cannot share a batch; A1111 runs them apart too
            out_uncond = self.model(x, sigma, uncond, self.extras)
            out_cond = self.model(x, sigma, cond, self.extras)
        return out_uncond + (out_cond - out_uncond) * self.cfg_scale
