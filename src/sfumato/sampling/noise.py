"""Seeds and noise with A1111's "CPU" RNG semantics, so a seed gives the same image on every machine.

`ImageRNG` mirrors A1111's `modules/rng.py` `ImageRNG` under the "CPU" random-number source: one
`torch.Generator` per image, seeded with that image's seed, draws the image's initial noise; variation
seeds are blended in with A1111's (quirky, per-column) slerp; "resize seed from" draws the noise at the
old size and pastes it centred; and every later `next()` continues the same per-image generators, which
is where A1111's ancestral samplers take their per-step noise. Because each image owns its generator,
image i of a batch equals the same seed rendered alone.

The brownian-tree sampler reproduces k-diffusion's `BrownianTreeNoiseSampler` with one torchsde tree per
image seed, as A1111 builds it for the DPM++ SDE family. Unlike A1111 (which builds it on the GPU), the
tree always lives on the CPU in float32, so results do not depend on the device.

Hand-written (not imported from A1111 or k-diffusion) because neither is a library we can depend on,
and because we must not touch torch's global RNG as A1111 does.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol

import torch
import torchsde
from torch import Tensor


class NoiseSampler(Protocol):
    """Fresh standard-normal noise shaped like the latent batch for a step from `sigma` to `sigma_next`."""

    def __call__(self, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor: ...


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(seed))


def _randn(shape: Sequence[int], generator: torch.Generator) -> Tensor:
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def slerp(val: float, low: Tensor, high: Tensor) -> Tensor:
    """A1111's variation-seed slerp, kept bit-compatible.

    On a (C, H, W) noise it normalises along dim 1, so each (channel, column) is interpolated on its own
    great circle; the nearly-parallel fallback returns `low*val + high*(1-val)` (swapped, as A1111 has it;
    it only triggers when the two noises are almost identical, where the swap does not matter).
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(
        1
    ) * high


class ImageRNG:
    """Per-image noise streams for a batch, as A1111's ImageRNG with the "CPU" RNG source.

    `shape` is one image's latent shape (C, H, W). `first()` gives the initial noise of the batch
    (B, C, H, W); `next()` gives the next noise from the same per-image generators (after `first()`; if
    called first, it returns `first()`, as A1111's does). All tensors are float32 on the CPU.
    `eta_noise_seed_delta` is A1111's "ENSD" setting: after the initial noise, the sampler noise streams
    restart from seed + delta. `latent_factor` is the VAE's pixels per latent: A1111 divides the
    "resize seed from" size by 8, which is only right for VAEs that downsample 8×.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from_h: int = 0,
        seed_resize_from_w: int = 0,
        *,
        eta_noise_seed_delta: int = 0,
        latent_factor: int = 8,
    ) -> None:
        if len(shape) != 3:
            raise ValueError(f"ImageRNG shape is one image's (C, H, W), got {tuple(shape)}")
        if not seeds:
            raise ValueError("ImageRNG needs at least one seed")
        self.shape = tuple(int(s) for s in shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = [int(s) for s in subseeds] if subseeds is not None else None
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        self.eta_noise_seed_delta = int(eta_noise_seed_delta)
        self.latent_factor = latent_factor
        self.generators = [_generator(seed) for seed in self.seeds]
        self.started = False

    def first(self) -> Tensor:
        """The initial noise of the batch; consumes one draw from each image's generator."""
        self.started = True
        shape = self.shape
        resized = self.seed_resize_from_h > 0 and self.seed_resize_from_w > 0
        factor = self.latent_factor
        noise_shape = (
            (shape[0], self.seed_resize_from_h // factor, self.seed_resize_from_w // factor)
            if resized
            else shape
        )
        images = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators, strict=True)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                subnoise = _randn(noise_shape, _generator(subseed))
            if noise_shape != shape:
                noise = _randn(noise_shape, _generator(seed))
            else:
                noise = _randn(shape, generator)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != shape:
                noise = self._paste_centred(noise, _randn(shape, generator))
            images.append(noise)
        if self.eta_noise_seed_delta:
            self.generators = [_generator(seed + self.eta_noise_seed_delta) for seed in self.seeds]
        return torch.stack(images)

    @staticmethod
    def _paste_centred(small: Tensor, canvas: Tensor) -> Tensor:
        """A1111's "resize seed from": the old-size noise centred on (or cropped into) new-size noise."""
        dx = (canvas.shape[2] - small.shape[2]) // 2
        dy = (canvas.shape[1] - small.shape[1]) // 2
        w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
        h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        sx, sy = max(-dx, 0), max(-dy, 0)
        canvas[:, ty : ty + h, tx : tx + w] = small[:, sy : sy + h, sx : sx + w]
        return canvas

    def next(self) -> Tensor:
        """The next noise of the batch, continuing each image's generator."""
        if not self.started:
            return self.first()
        return torch.stack([_randn(self.shape, g) for g in self.generators])


class ImageRNGNoiseSampler:
    """`NoiseSampler` drawing from `ImageRNG.next()`: A1111's noise for ancestral steps and churn."""

    def __init__(
        self, rng: ImageRNG, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ):
        self.rng = rng
        self.device = device
        self.dtype = dtype

    def __call__(self, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
        return self.rng.next().to(self.device, self.dtype)


class BrownianTreeNoiseSampler:
    """k-diffusion's brownian-tree noise with one tree per image seed (A1111's DPM++ SDE family).

    Noise for (sigma, sigma_next) is the Brownian increment between the two noise levels, normalised to
    unit variance; because the tree is a fixed path per seed, the noise of an image depends only on its
    seed and the sigmas, not on the batch it is in or the step count. A1111 passes the whole schedule's
    smallest positive sigma and its largest sigma as `sigma_min`/`sigma_max`.
    """

    def __init__(
        self,
        x: Tensor,
        sigma_min: Tensor | float,
        sigma_max: Tensor | float,
        seeds: Sequence[int],
    ) -> None:
        if len(seeds) != x.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {x.shape[0]}")
        self.device, self.dtype = x.device, x.dtype
        t0 = torch.as_tensor(sigma_min, dtype=torch.float32).cpu()
        t1 = torch.as_tensor(sigma_max, dtype=torch.float32).cpu()
        self.sign = 1.0
        if t0 > t1:
            t0, t1, self.sign = t1, t0, -1.0
        w0 = torch.zeros(tuple(x.shape[1:]), dtype=torch.float32)
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(seed)) for seed in seeds]

    def __call__(self, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
        t0 = torch.as_tensor(sigma, dtype=torch.float32).cpu()
        t1 = torch.as_tensor(sigma_next, dtype=torch.float32).cpu()
        sign = self.sign
        if t0 > t1:
            t0, t1, sign = t1, t0, -sign
        with warnings.catch_warnings():
            # torchsde warns when a float32 query sits an ulp outside [t0, t1]; k-diffusion gets the same.
            warnings.simplefilter("ignore", UserWarning)
            w = torch.stack([tree(t0, t1) for tree in self.trees]) * sign
        return (w / (t1 - t0).abs().sqrt()).to(self.device, self.dtype)
