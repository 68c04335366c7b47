"""The denoiser stack: the UNet seen as a function (x, sigma) -> predicted clean latent.

Layer 1, `ModelDenoiser`, turns a discrete-time eps- or v-prediction UNet into a sigma-space denoiser
(Karras et al. 2022 scalings: c_in = 1/sqrt(sigma²+1); eps: x0 = x - sigma·eps; v: x0 = c_skip·x + c_out·v).
Layer 2, `GuidedDenoiser`, adds classifier-free guidance and asks a conditioning schedule for the
conditioning of the current step, which is how prompt editing and alternation plug in; for
instruct-pix2pix models it is A1111's (and the paper's) three-way guidance over text and image.
Layer 3, `MaskBlend`, keeps the unmasked latents of an inpainting job at the init image's.
Image conditioning (an inpainting model's mask and masked image, a pix2pix model's source image)
travels in `UNetExtras.c_concat`, appended to the UNet's input channels. Later layers (ControlNet
residuals, regional prompts) wrap or extend these without touching samplers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sfumato.errors import UserError
from sfumato.models.stored_weights import compute_dtype
from sfumato.prompts.encode import Conditioning
from sfumato.sampling.discrete import DiscreteSchedule


@dataclass
class UNetExtras:
    """Per-image inputs the UNet needs besides text: SDXL's size/crop ids (batch × 6) and the image
    conditioning concatenated to its input (batch × C × h × w: 5 channels for inpainting models, the
    mask then the masked image's latents; 4 for instruct-pix2pix, the source image's latents)."""

    time_ids: torch.Tensor | None = None
    c_concat: torch.Tensor | None = None

    @staticmethod
    def batch(parts: list[UNetExtras]) -> UNetExtras:
        """The extras of several UNet calls stacked into one call's batch."""

        def cat(values: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if values[0] is None else torch.cat(values)  # type: ignore[arg-type]

        return UNetExtras(cat([p.time_ids for p in parts]), cat([p.c_concat for p in parts]))


class ModelDenoiser:
    """eps/v-prediction UNet -> x0 prediction in sigma space. `forward`, when given, is called in the
    UNet's place (its compiled forward, `sfumato.models.compiled_unet`)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        schedule: DiscreteSchedule,
        prediction: str,
        forward: Callable[..., Any] | None = None,
    ) -> None:
        self.unet = unet
        self.forward = forward or unet
        self.schedule = schedule
        self.prediction = prediction

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, extras: UNetExtras
    ) -> torch.Tensor:
        dtype = compute_dtype(self.unet)
        sigma_b = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        c_in = 1.0 / (sigma_b**2 + 1.0) ** 0.5
        timestep = self.schedule.sigma_to_t(sigma.float().cpu()).to(x.device)
        added = None
        if cond.pooled is not None:
            added = {"text_embeds": cond.pooled.to(dtype), "time_ids": extras.time_ids.to(dtype)}
        model_input = x * c_in
        if extras.c_concat is not None:
            model_input = torch.cat([model_input, extras.c_concat.to(x.dtype)], dim=1)
        out = self.forward(
            model_input.to(dtype),
            timestep,
            encoder_hidden_states=cond.cross.to(dtype),
            added_cond_kwargs=added,
        ).sample.to(x.dtype)
        if self.prediction == "v_prediction":
            return x / (sigma_b**2 + 1.0) - out * sigma_b / (sigma_b**2 + 1.0) ** 0.5
        return x - out * sigma_b


def step_index(sigmas: torch.Tensor, sigma: torch.Tensor) -> int:
    """The sampler step a model call at `sigma` belongs to: the last of the schedule's (CPU, float)
    `sigmas` at or above it, so a step's extra evaluations between its sigmas count to it."""
    value = float(sigma.reshape(-1)[0])
    above = int((sigmas[:-1] >= value * (1 - 1e-6)).sum().item())
    return max(0, min(above - 1, len(sigmas) - 2))


ModelCall = Callable[[torch.Tensor, torch.Tensor, Conditioning, UNetExtras], torch.Tensor]
"""A conditioned model call (x, sigma, conditioning, extras) -> x0: a `ModelDenoiser` or a wrapper of one."""

ConditioningAt = Callable[[int], tuple[Conditioning, list[tuple[Conditioning, float]]]]
"""Given a step index: the negative conditioning and the weighted positive parts (AND), for the batch."""


class GuidedDenoiser:
    """Classifier-free guidance with composable (AND) prompts over a per-step conditioning schedule:
    x0 = u + Σ_i weight_i · scale · (c_i − u), as A1111 computes it.

    All conditionings of the same token length go through the UNet in one batch; prompts of different
    lengths cannot share a batch, so they run apart (A1111's default too) unless `pad_with` is given:
    then shorter prompts are padded with empty-prompt chunks (A1111's "Pad prompt/negative prompt"
    option, which changes images slightly and saves UNet calls). The step a model call
    belongs to is found from its sigma (the last schedule sigma at or above it), so multi-evaluation
    samplers (Heun, DPM2) see the conditioning of the step they are in.

    With `image_cfg_scale` (instruct-pix2pix), three calls per step: text + image, image only, neither;
    x0 = n + scale · (ti − i) + image_scale · (i − n) (Brooks et al. 2023, as A1111 and diffusers).
    The image conditioning is `extras.c_concat`; "neither" gets zeros. AND cannot combine with it.

    `NegativeGuidanceSkip` (A1111's "Negative Guidance minimum sigma", infotext "NGMS") is an opt-in
    approximation: on the steps it picks, the negative prompt's UNet half is not computed and the first
    positive output stands in for it, so those steps cost one batch half less and are unguided.
    """

    def __init__(
        self,
        model: ModelCall,
        sigmas: torch.Tensor,
        conditioning_at: ConditioningAt,
        cfg_scale: float,
        extras: UNetExtras,
        pad_with: Conditioning | None = None,
        image_cfg_scale: float | None = None,
        skip_negative: NegativeGuidanceSkip | None = None,
    ) -> None:
        self.model = model
        self.sigmas = sigmas.float().cpu()
        self.conditioning_at = conditioning_at
        self.cfg_scale = cfg_scale
        self.extras = extras
        self.pad_with = pad_with  # the empty prompt's states: pad shorter prompts into one batch
        if image_cfg_scale is not None and extras.c_concat is None:
            raise ValueError("image_cfg_scale needs the image conditioning in extras.c_concat")
        self.image_cfg_scale = image_cfg_scale
        self.skip_negative = skip_negative

    def step_for(self, sigma: torch.Tensor) -> int:
        return step_index(self.sigmas, sigma)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        step = self.step_for(sigma)
        uncond, parts = self.conditioning_at(step)
        if self.image_cfg_scale is not None:
            return self._edit_guidance(x, sigma, uncond, parts)
        if self.cfg_scale == 1.0 and len(parts) == 1 and parts[0][1] == 1.0:
            return self.model(x, sigma, parts[0][0], self.extras)  # u + 1·(c − u) = c: skip u
        skip = self.skip_negative is not None and self.skip_negative.applies(
            step, float(sigma.reshape(-1)[0])
        )
        conds = [cond for cond, _ in parts] if skip else [uncond, *(cond for cond, _ in parts)]
        outputs = self._run_all(x, sigma, conds, [self.extras] * len(conds))
        if skip:
            outputs = [outputs[0], *outputs]  # the first positive output stands in for the negative's
        out_uncond = outputs[0]
        result = out_uncond.clone()
        for (_, weight), out_cond in zip(parts, outputs[1:], strict=True):
            result += (out_cond - out_uncond) * (weight * self.cfg_scale)
        return result

    def _edit_guidance(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        uncond: Conditioning,
        parts: list[tuple[Conditioning, float]],
    ) -> torch.Tensor:
        if len(parts) != 1:
            raise UserError(
                "AND cannot be used with an instruct-pix2pix model's image CFG scale (set it to 1)",
                field="prompt",
            )
        image = self.extras
        no_image = UNetExtras(image.time_ids, torch.zeros_like(image.c_concat))  # type: ignore[arg-type]
        both, image_only, neither = self._run_all(
            x, sigma, [parts[0][0], uncond, uncond], [image, image, no_image]
        )
        assert self.image_cfg_scale is not None
        return neither + self.cfg_scale * (both - image_only) + self.image_cfg_scale * (image_only - neither)

    def _run_all(
        self, x: torch.Tensor, sigma: torch.Tensor, conds: list[Conditioning], extras: list[UNetExtras]
    ) -> list[torch.Tensor]:
        """UNet outputs for each (conditioning, extras), batching those of equal length into one call."""
        if self.pad_with is not None:
            conds = pad_to_longest(conds, self.pad_with)
        outputs: list[torch.Tensor | None] = [None] * len(conds)
        by_length: dict[int, list[int]] = {}
        for index, cond in enumerate(conds):
            by_length.setdefault(cond.cross.shape[1], []).append(index)
        for indices in by_length.values():
            n = len(indices)
            both = Conditioning.batch([conds[i] for i in indices])
            batched = UNetExtras.batch([extras[i] for i in indices])
            out = self.model(x.repeat(n, 1, 1, 1), sigma.repeat(n), both, batched)
            for i, chunk in zip(indices, out.chunk(n), strict=True):
                outputs[i] = chunk
        return outputs  # type: ignore[return-value]


@dataclass(frozen=True)
class NegativeGuidanceSkip:
    """Where to skip the negative prompt: below `min_sigma`, on odd steps only unless `all_steps`.

    A1111's rule (options `s_min_uncond` and `s_min_uncond_all`): alternating keeps most of the
    guidance's effect at thresholds that would wash the image out if every low-sigma step skipped.
    A1111 counts denoiser calls where this counts sampler steps; they agree for one-call samplers.
    """

    min_sigma: float
    all_steps: bool = False

    def applies(self, step: int, sigma: float) -> bool:
        return self.min_sigma > 0 and sigma < self.min_sigma and (self.all_steps or step % 2 == 1)


class MaskBlend:
    """Inpainting by latent blending (A1111's, for any checkpoint): after every model call the kept
    area of the prediction is the init image's latents, so the sampler only ever changes the masked
    area and the rest converges to the original."""

    def __init__(
        self,
        inner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        init: torch.Tensor,
        keep: torch.Tensor,
    ) -> None:
        self.inner = inner
        self.init = init
        self.keep = keep  # 1 where the init image is kept, 0 where it is repainted

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.blend(self.inner(x, sigma))

    def blend(self, latents: torch.Tensor) -> torch.Tensor:
        return self.init * self.keep + latents * (1 - self.keep)


def pad_to_longest(conds: list[Conditioning], empty: Conditioning) -> list[Conditioning]:
    """Append empty-prompt chunks (77 tokens each) to every conditioning shorter than the longest."""
    longest = max(c.cross.shape[1] for c in conds)
    chunk = empty.cross.shape[1]
    padded = []
    for cond in conds:
        missing = (longest - cond.cross.shape[1]) // chunk
        if missing:
            filler = empty.cross[:1].expand(cond.cross.shape[0], -1, -1).repeat(1, missing, 1)
            cond = Conditioning(cross=torch.cat([cond.cross, filler], dim=1), pooled=cond.pooled)
        padded.append(cond)
    return padded
