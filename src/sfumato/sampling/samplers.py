"""A1111's samplers, by A1111's names, as sigma-space loops we own.

Every sampler is `fn(denoiser, x, sigmas, *, noise, callback, **options) -> x` where
`denoiser(x, sigma[batch]) -> x0` is the k-diffusion convention (x is the "variance exploding" latent
x0 + sigma * eps). Owning the loop is what lets prompt editing, masks, ControlNet schedules, previews
and interruption live inside it. The algorithms are written from the papers (Karras et al. 2022;
DPM-Solver/DPM-Solver++, Lu et al. 2022; UniPC, Zhao et al. 2023; DDIM, Song et al. 2021; LCM, Luo et
al. 2023; Restart, Xu et al. 2023) following the step logic of k-diffusion and A1111 (which A1111's
images depend on), but not imported: the `k-diffusion` package drags torchvision and much more, and
A1111's own samplers are not a library.

A1111's "timestep" samplers (DDIM, PLMS, UniPC) run on the model's discrete timesteps in the VP
parametrisation. In sigma space the same steps are exact: a DDIM step with eta from sigma to sigma_next
is an Euler-ancestral step with k-diffusion's `get_ancestral_step` (eta=0: plain Euler), and UniPC/PLMS
only depend on log-sigma. Two A1111 behaviours are kept so its images reproduce: txt2img starts from
unit-variance noise taken as the VP latent (use `SamplerInfo.initial_noise_scale`), and the loop stops
at the last non-zero sigma of its grid (t = 1 for DDIM, t = 0 for UniPC) returning that latent in the
VP scale, x / sqrt(1 + sigma^2), without a final denoise: the trailing 0 of the schedule marks the stop.

Noise: samplers draw from the `NoiseSampler` they are given, in the order A1111 draws from its
per-image generators (`noise.ImageRNG`), or from the brownian tree for the DPM++ SDE family.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from sfumato.errors import unknown_name
from sfumato.sampling.noise import NoiseSampler
from sfumato.sampling.schedules import SCHEDULES, karras

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass
class StepInfo:
    """What a sampler reports once per step, after the model evaluation and before x moves on.

    `x` is the sample at `sigma` and `denoised` its clean prediction (what previews show and what A1111
    returns when interrupted). `total` is the number of reports this run makes (None if not known in
    advance, as for DPM adaptive).
    """

    step: int
    total: int | None
    x: Tensor
    denoised: Tensor
    sigma: float
    sigma_next: float


Callback = Callable[[StepInfo], None]


class SamplerFn(Protocol):
    def __call__(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        noise: NoiseSampler | None = None,
        callback: Callback | None = None,
        **options: Any,
    ) -> Tensor: ...


def _report(
    callback: Callback | None, i: int, total: int | None, x: Tensor, denoised: Tensor, s, s_next
) -> None:
    if callback is not None:
        callback(StepInfo(i, total, x, denoised, float(s), float(s_next)))


def _batch(x: Tensor, sigma: Tensor | float) -> Tensor:
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device) * x.new_ones([x.shape[0]])


def _to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    return (x - denoised) / sigma


def _need(noise: NoiseSampler | None, what: str) -> NoiseSampler:
    if noise is None:
        raise ValueError(f"{what} needs a noise sampler")
    return noise


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step into a deterministic step down to `sigma_down` plus fresh noise of std `sigma_up`.

    eta = 1 is the DDPM posterior; eta = 0 is deterministic (DDIM).
    """
    if not eta:
        return sigma_next, torch.zeros_like(torch.as_tensor(sigma_next))
    sigma_up = torch.minimum(
        torch.as_tensor(sigma_next),
        eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5,
    )
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise) -> tuple[Tensor, Tensor]:
    """Karras "churn": raise the noise level before the step. A1111 draws the noise every step when
    churn is on (even outside [s_tmin, s_tmax]), which fixes the generator stream position."""
    sigma = sigmas[i]
    if s_churn <= 0:
        return x, sigma
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    eps = _need(noise, "churn")(sigma, sigmas[i + 1]) * s_noise
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(
    denoiser, x, sigmas, *, noise=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0
) -> Tensor:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Alg. 2 with first-order steps)."""
    total = len(sigmas) - 1
    for i in range(total):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, _batch(x, sigma_hat))
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        x = x + _to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0) -> Tensor:
    """Euler step down to sigma_down, then fresh noise up to sigma_next."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = denoiser(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0 and eta:
            x = x + _need(noise, "Euler a")(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(
    denoiser, x, sigmas, *, noise=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 2); the final step to sigma 0 is Euler."""
    total = len(sigmas) - 1
    for i in range(total):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, _batch(x, sigma_hat))
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigmas[i + 1], denoiser(x_2, _batch(x, sigmas[i + 1])))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(
    denoiser, x, sigmas, *, noise=None, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0
) -> Tensor:
    """DPM-Solver-2-like midpoint steps, the midpoint at the geometric mean of the two sigmas."""
    total = len(sigmas) - 1
    for i in range(total):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, _batch(x, sigma_hat))
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = _to_d(x_2, sigma_mid, denoiser(x_2, _batch(x, sigma_mid)))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(denoiser, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0) -> Tensor:
    """DPM2 midpoint step down to sigma_down, then fresh noise up to sigma_next."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = denoiser(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        d = _to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = _to_d(x_2, sigma_mid, denoiser(x_2, _batch(x, sigma_mid)))
            x = x + d_2 * (sigma_down - sigmas[i])
            if eta:
                x = x + _need(noise, "DPM2 a")(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j} (exact, float64)."""
    nodes = [t[i - k] for k in range(order) if k != j]
    poly = np.poly1d([1.0])
    for node in nodes:
        poly *= np.poly1d([1.0, -node]) / (t[i - j] - node)
    integral = poly.integ()
    return float(integral(t[i + 1]) - integral(t[i]))


@torch.no_grad()
def sample_lms(denoiser, x, sigmas, *, noise=None, callback=None, order=4) -> Tensor:
    """Linear multistep (Adams-Bashforth in sigma) on the last `order` derivatives."""
    total = len(sigmas) - 1
    sigmas_np = sigmas.detach().cpu().double().numpy()
    ds: list[Tensor] = []
    for i in range(total):
        denoised = denoiser(x, _batch(x, sigmas[i]))
        ds.append(_to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        cur = min(i + 1, order)
        coeffs = [_lms_coefficient(cur, sigmas_np, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=True))
    return x


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    denoiser, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0
) -> Tensor:
    """DPM-Solver++(2S) single-step second-order steps down to sigma_down, plus ancestral noise."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = denoiser(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = denoiser(x_2, _batch(x, _sigma(s)))
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0 and eta:
            x = x + _need(noise, "DPM++ 2S a")(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    denoiser, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, r=0.5
) -> Tensor:
    """DPM-Solver++ stochastic second-order steps (intermediate point at fraction r of log-sigma)."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = denoiser(x, _batch(x, sigmas[i]))
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        if sigmas[i + 1] == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        if eta:
            x_2 = x_2 + _need(noise, "DPM++ SDE")(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = denoiser(x_2, _batch(x, _sigma(s)))
        sd, su = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        if eta:
            x = x + _need(noise, "DPM++ SDE")(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """DPM-Solver++(2M): second-order multistep in log-sigma, first-order on the first and last step."""
    total = len(sigmas) - 1
    old_denoised = None
    for i in range(total):
        denoised = denoiser(x, _batch(x, sigmas[i]))
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
            h = t_next - t
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = (t - _t(sigmas[i - 1])) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, solver_type="midpoint"
) -> Tensor:
    """DPM-Solver++(2M) SDE; `solver_type` "midpoint" (A1111's DPM++ 2M SDE) or "heun" (… SDE Heun)."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', not {solver_type!r}")
    total = len(sigmas) - 1
    old_denoised, h_last = None, None
    for i in range(total):
        denoised = denoiser(x, _batch(x, sigmas[i]))
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    phi = (-h - eta_h).expm1().neg() / (-h - eta_h) + 1
                    x = x + phi * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                scale = sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
                x = x + _need(noise, "DPM++ 2M SDE")(sigmas[i], sigmas[i + 1]) * scale
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(denoiser, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0) -> Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep with two past predictions."""
    total = len(sigmas) - 1
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in range(total):
        denoised = denoiser(x, _batch(x, sigmas[i]))
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                scale = sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                x = x + _need(noise, "DPM++ 3M SDE")(sigmas[i], sigmas[i + 1]) * scale
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


class _DPMSolver:
    """DPM-Solver (Lu et al. 2022) 1/2/3-order single steps in t = -log sigma, eps-parametrised."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            cache[key] = (x - self.denoiser(x, _batch(x, _sigma(t)))) / _sigma(t)
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        eps = self.eps(cache, "eps", x, t)
        return x - _sigma(t_next) * (t_next - t).expm1() * eps

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - _sigma(s2) * (r2 * h).expm1() * eps
            - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (
            x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        )

    def ancestral_target(self, t, t_next, t_end, eta):
        """Where the deterministic part of an ancestral step lands, and the noise std to add after it."""
        if not eta:
            return t_next, 0.0
        sd, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = torch.minimum(t_end, _t(sd))
        return t_next_, (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5


def _endpoints(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    positive = sigmas[sigmas > 0]
    return positive.min(), sigmas.max()


@torch.no_grad()
def sample_dpm_fast(denoiser, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0) -> Tensor:
    """DPM-Solver "fast": len(sigmas) - 1 model calls in 3rd/2nd/1st-order steps uniform in log-sigma.

    Only the schedule's end points and length are used (A1111 passes the model's sigma_min/sigma_max and
    the step count); it stops at sigma_min without a final denoise, as A1111's does. A1111 runs it with
    its ancestral eta (1 by default).
    """
    sigma_min, sigma_max = _endpoints(sigmas)
    nfe = len(sigmas) - 1
    solver = _DPMSolver(denoiser)
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    m = nfe // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = solver.ancestral_target(t, t_next, t_end, eta)
        eps = solver.eps(cache, "eps", x, t)
        _report(callback, i, len(orders), x, x - _sigma(t) * eps, _sigma(t), _sigma(t_next))
        step = {1: solver.step_1, 2: solver.step_2, 3: solver.step_3}[order]
        x = step(x, t, t_next_, cache)
        if eta:
            x = x + su * s_noise * _need(noise, "DPM fast")(_sigma(t), _sigma(t_next))
    return x


@torch.no_grad()
def sample_dpm_adaptive(
    denoiser,
    x,
    sigmas,
    *,
    noise=None,
    callback=None,
    eta=1.0,
    s_noise=1.0,
    order=3,
    rtol=0.05,
    atol=0.0078,
    h_init=0.05,
    pcoeff=0.0,
    icoeff=1.0,
    dcoeff=0.0,
    accept_safety=0.81,
) -> Tensor:
    """DPM-Solver with adaptive step size (embedded order-2/3 pair, PID controller), from the schedule's
    largest to smallest positive sigma; the step count is not fixed, so `StepInfo.total` is None."""
    if order not in (2, 3):
        raise ValueError("DPM adaptive order must be 2 or 3")
    sigma_min, sigma_max = _endpoints(sigmas)
    solver = _DPMSolver(denoiser)
    s, t_end = _t(sigma_max), _t(sigma_min)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    controller = _PIDStepSize(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_prev = x
    steps = 0
    while s < t_end - 1e-5:
        cache: dict[str, Tensor] = {}
        t = torch.minimum(t_end, s + controller.h)
        t_, su = solver.ancestral_target(s, t, t_end, eta)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - _sigma(s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_, cache)
            x_high = solver.step_2(x, s, t_, cache)
        else:
            x_low = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        s_before = s
        if controller.propose_step(float(error)):
            x_prev = x_low
            x = x_high
            if eta:
                x = x + su * s_noise * _need(noise, "DPM adaptive")(_sigma(s), _sigma(t))
            s = t
        _report(callback, steps, None, x, denoised, _sigma(s_before), _sigma(t))
        steps += 1
    return x


class _PIDStepSize:
    """PID step-size controller (Söderlind 2003) in the form k-diffusion's DPM adaptive uses."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


def _stop_index(sigmas: Tensor) -> int:
    """Number of steps a timestep sampler takes: all intervals but a final one into sigma 0."""
    return len(sigmas) - 2 if sigmas[-1] == 0 else len(sigmas) - 1


def _to_vp(x: Tensor, sigma: Tensor) -> Tensor:
    return x / (1 + sigma**2) ** 0.5


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, noise=None, callback=None, eta=0.0) -> Tensor:
    """DDIM (Song et al. 2021) as A1111 runs it; eta = 0 is deterministic, eta > 0 adds DDIM's noise.

    In sigma space a DDIM step is `x0 + sigma_down * eps` plus `sigma_up` noise with k-diffusion's
    ancestral split, which is exactly DDIM's sigma_t(eta) rewritten. Stops at the last non-zero sigma
    and returns the VP latent there (A1111 stops at timestep 1, see the module docstring).
    """
    total = _stop_index(sigmas)
    for i in range(total):
        denoised = denoiser(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        x = denoised + sigma_down * _to_d(x, sigmas[i], denoised)
        if eta:
            x = x + _need(noise, "DDIM")(sigmas[i], sigmas[i + 1]) * sigma_up
    return _to_vp(x, sigmas[total]) if total < len(sigmas) - 1 else x


@torch.no_grad()
def sample_plms(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """PLMS (Liu et al. 2022, pseudo linear multistep on eps) as A1111 runs it: a pseudo-improved-Euler
    first step (two model calls), then 2nd-4th order Adams-Bashforth on eps; stops like DDIM."""
    total = _stop_index(sigmas)
    old_eps: list[Tensor] = []
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _batch(x, sigma))
        e_t = _to_d(x, sigma, denoised)
        if not old_eps:
            x_next = x + (sigma_next - sigma) * e_t
            e_next = _to_d(x_next, sigma_next, denoiser(x_next, _batch(x, sigma_next)))
            e_prime = (e_t + e_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        _report(callback, i, total, x, x - sigma * e_prime, sigma, sigma_next)
        x = x + (sigma_next - sigma) * e_prime
        old_eps = [*old_eps, e_t][-3:]
    return _to_vp(x, sigmas[total]) if total < len(sigmas) - 1 else x


def _unipc_update(
    denoiser, x, models, lambdas, sigmas_prev, sigma_t, order, variant, use_corrector
) -> tuple[Tensor, Tensor | None]:
    """One UniPC step (predictor UniP-k, corrector UniC-k) in data prediction, in sigma space."""
    lambda_t = _t(sigma_t)
    m0, lambda_0 = models[-1], lambdas[-1]
    h = lambda_t - lambda_0
    rks, d1s = [], []
    for i in range(1, order):
        rk = (lambdas[-(i + 1)] - lambda_0) / h
        rks.append(rk)
        d1s.append((models[-(i + 1)] - m0) / rk)
    rks.append(torch.ones_like(h))
    rks_t = torch.stack(rks)
    hh = -h
    h_phi_1 = hh.expm1()
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else hh.expm1()
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(rks_t ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_mat, b_vec = torch.stack(rows).double(), torch.stack(b).double()

    x_t_ = sigma_t / sigmas_prev[-1] * x - h_phi_1 * m0
    x_t = x_t_
    if d1s:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
        x_t = x_t_ - b_h * sum(float(r) * d for r, d in zip(rhos_p, d1s, strict=True))
    if not use_corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_mat, b_vec)
    model_t = denoiser(x_t, _batch(x, sigma_t))
    corr = sum(float(r) * d for r, d in zip(rhos_c[:-1], d1s, strict=True)) if d1s else 0
    return x_t_ - b_h * (corr + float(rhos_c[-1]) * (model_t - m0)), model_t


@torch.no_grad()
def sample_unipc(
    denoiser, x, sigmas, *, noise=None, callback=None, order=3, variant="bh1", lower_order_final=True
) -> Tensor:
    """UniPC multistep (Zhao et al. 2023) with A1111's defaults (bh1, order 3, lower order at the end).

    One model call per step: the model output at each predicted point feeds both the corrector and the
    next predictor. Stops at the last non-zero sigma, returning the VP latent there (as A1111's UniPC,
    which does not denoise to zero).
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', not {variant!r}")
    steps = _stop_index(sigmas)
    order = max(1, min(order, steps))
    models = [denoiser(x, _batch(x, sigmas[0]))]
    lambdas, prev_sigmas = [_t(sigmas[0])], [sigmas[0]]
    for step in range(1, steps + 1):
        step_order = min(order, step, steps + 1 - step) if lower_order_final else min(order, step)
        use_corrector = step != steps
        x_before = x
        x, model_x = _unipc_update(
            denoiser, x, models, lambdas, prev_sigmas, sigmas[step], step_order, variant, use_corrector
        )
        denoised = models[-1] if model_x is None else model_x
        _report(callback, step - 1, steps, x_before, denoised, sigmas[step - 1], sigmas[step])
        if model_x is not None:
            models = [*models, model_x][-order:]
            lambdas = [*lambdas, _t(sigmas[step])][-order:]
            prev_sigmas = [*prev_sigmas, sigmas[step]][-order:]
    return _to_vp(x, sigmas[steps]) if steps < len(sigmas) - 1 else x


@torch.no_grad()
def sample_lcm(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """Latent Consistency Model sampling: jump to the consistency prediction, re-noise to sigma_next."""
    total = len(sigmas) - 1
    for i in range(total):
        denoised = denoiser(x, _batch(x, sigmas[i]))
        _report(callback, i, total, x, denoised, sigmas[i], sigmas[i + 1])
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * _need(noise, "LCM")(sigmas[i], sigmas[i + 1])
    return x


def _restart_plan(sigmas: Tensor) -> list[tuple[Tensor, Tensor]]:
    """A1111's default Restart plan: from 20 steps on, a Karras schedule with fewer steps plus one
    (two from 36 steps) restart segment(s) that jump back from sigma ~0.1 to ~2 and re-descend."""
    steps = len(sigmas) - 1
    restart = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0]))
        restart = {int(torch.argmin(abs(sigmas - 0.1), dim=0)): (restart_steps + 1, restart_times, 2.0)}
    plan = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart:
            restart_steps, restart_times, restart_max = restart[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                segment = karras(restart_steps, float(sigmas[min_idx]), float(sigmas[max_idx]))[:-1]
                plan.extend(list(itertools.pairwise(segment)) * restart_times)
    return plan


@torch.no_grad()
def sample_restart(denoiser, x, sigmas, *, noise=None, callback=None, s_noise=1.0) -> Tensor:
    """Restart sampling (Xu et al. 2023) as A1111's: Heun steps, with restarts that add noise back."""
    plan = _restart_plan(sigmas)
    last = None
    for i, (sigma, sigma_next) in enumerate(plan):
        if last is not None and last < sigma:
            x = x + _need(noise, "Restart")(sigma, sigma_next) * s_noise * (sigma**2 - last**2) ** 0.5
        denoised = denoiser(x, _batch(x, sigma))
        d = _to_d(x, sigma, denoised)
        _report(callback, i, len(plan), x, denoised, sigma, sigma_next)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigma_next, denoiser(x_2, _batch(x, sigma_next)))
            x = x + (d + d_2) / 2 * dt
        last = sigma_next
    return x


def _second_order_calls(sigmas: Tensor) -> int:
    n = len(sigmas) - 1
    return 2 * n - (1 if sigmas[-1] == 0 else 0)


@dataclass(frozen=True)
class SamplerInfo:
    """One A1111 sampler: its function and what the engine needs to know to drive it."""

    name: str
    fn: SamplerFn
    aliases: tuple[str, ...] = ()
    automatic_schedule: str = "uniform"
    """Internal schedule name "Automatic" means for this sampler (A1111's per-sampler default)."""
    uses_noise: bool = False
    """Draws fresh noise with its default options (ancestral / SDE); then results depend on the seed
    beyond the initial noise. Churn (s_churn > 0) also makes Euler/Heun/DPM2 draw noise, and Restart
    only restarts (with noise) from 20 steps on."""
    brownian: bool = False
    """Wants `BrownianTreeNoiseSampler` (seeded per image) rather than the `ImageRNG` stream."""
    calls_per_step: int = 1
    discard_penultimate: bool = False
    own_grid: bool = False
    """A1111 timestep sampler: ignores the schedule type, starts from VP noise, stops before sigma 0."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """A1111's default options (e.g. eta); passed unless overridden."""
    model_calls: Callable[[Tensor], int | None] = lambda sigmas: len(sigmas) - 1
    """Model evaluations a run over `sigmas` makes (None when adaptive)."""

    @property
    def default_schedule(self) -> str:
        """The schedule-type label "Automatic" resolves to (or "own" for the timestep grids)."""
        labels = {s.name: s.label for s in SCHEDULES}
        return labels.get(self.automatic_schedule, self.automatic_schedule)

    def initial_noise_scale(self, sigma_max: float) -> float:
        """Factor turning unit noise into the txt2img starting x: sigma_max for k-diffusion samplers,
        sqrt(1 + sigma_max^2) for A1111's timestep samplers (their start is the VP latent = noise)."""
        return (1 + sigma_max**2) ** 0.5 if self.own_grid else sigma_max

    def __call__(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        noise: NoiseSampler | None = None,
        callback: Callback | None = None,
        **options: Any,
    ) -> Tensor:
        """Run the sampler. Options it does not take (eta for Euler, say) are ignored, as A1111 does;
        names no sampler knows are an error."""
        unknown = set(options) - _ALL_OPTIONS
        if unknown:
            raise TypeError(f"unknown sampler option(s): {', '.join(sorted(unknown))}")
        accepted = _option_names(self.fn)
        kwargs = {**self.defaults, **{k: v for k, v in options.items() if k in accepted}}
        sigmas = sigmas.to(x.device, torch.float32)
        return self.fn(denoiser, x, sigmas, noise=noise, callback=callback, **kwargs)


def _option_names(fn: Callable[..., Any]) -> set[str]:
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY} - {"noise", "callback"}


def _dpm_fast_calls(sigmas: Tensor) -> int:
    return len(sigmas) - 1


def _timestep_calls(sigmas: Tensor) -> int:
    return _stop_index(sigmas)


SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo("DPM++ 2M", sample_dpmpp_2m, ("k_dpmpp_2m",), "karras"),
    SamplerInfo(
        "DPM++ SDE",
        sample_dpmpp_sde,
        ("k_dpmpp_sde",),
        "karras",
        uses_noise=True,
        brownian=True,
        calls_per_step=2,
        model_calls=_second_order_calls,
    ),
    SamplerInfo(
        "DPM++ 2M SDE",
        sample_dpmpp_2m_sde,
        ("k_dpmpp_2m_sde",),
        "exponential",
        uses_noise=True,
        brownian=True,
    ),
    SamplerInfo(
        "DPM++ 2M SDE Heun",
        sample_dpmpp_2m_sde,
        ("k_dpmpp_2m_sde_heun",),
        "exponential",
        uses_noise=True,
        brownian=True,
        defaults={"solver_type": "heun"},
    ),
    SamplerInfo(
        "DPM++ 2S a",
        sample_dpmpp_2s_ancestral,
        ("k_dpmpp_2s_a",),
        "karras",
        uses_noise=True,
        calls_per_step=2,
        model_calls=_second_order_calls,
    ),
    SamplerInfo(
        "DPM++ 3M SDE",
        sample_dpmpp_3m_sde,
        ("k_dpmpp_3m_sde",),
        "exponential",
        uses_noise=True,
        brownian=True,
        discard_penultimate=True,
    ),
    SamplerInfo("Euler a", sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"), uses_noise=True),
    SamplerInfo("Euler", sample_euler, ("k_euler",)),
    SamplerInfo("LMS", sample_lms, ("k_lms",)),
    SamplerInfo("Heun", sample_heun, ("k_heun",), calls_per_step=2, model_calls=_second_order_calls),
    SamplerInfo(
        "DPM2",
        sample_dpm_2,
        ("k_dpm_2",),
        "karras",
        calls_per_step=2,
        discard_penultimate=True,
        model_calls=_second_order_calls,
    ),
    SamplerInfo(
        "DPM2 a",
        sample_dpm_2_ancestral,
        ("k_dpm_2_a",),
        "karras",
        uses_noise=True,
        calls_per_step=2,
        discard_penultimate=True,
        model_calls=_second_order_calls,
    ),
    SamplerInfo("DPM fast", sample_dpm_fast, ("k_dpm_fast",), uses_noise=True, model_calls=_dpm_fast_calls),
    SamplerInfo(
        "DPM adaptive", sample_dpm_adaptive, ("k_dpm_ad",), uses_noise=True, model_calls=lambda sigmas: None
    ),
    SamplerInfo(
        "Restart",
        sample_restart,
        ("restart",),
        "karras",
        uses_noise=True,
        calls_per_step=2,
        model_calls=lambda sigmas: sum(2 - (float(b) == 0) for _, b in _restart_plan(sigmas)),
    ),
    SamplerInfo("DDIM", sample_ddim, ("ddim",), "ddim", own_grid=True, model_calls=_timestep_calls),
    SamplerInfo(
        "PLMS", sample_plms, ("plms",), "ddim", own_grid=True, model_calls=lambda s: _timestep_calls(s) + 1
    ),
    SamplerInfo("UniPC", sample_unipc, ("unipc",), "unipc", own_grid=True, model_calls=_timestep_calls),
    SamplerInfo("LCM", sample_lcm, ("k_lcm",), "lcm", uses_noise=True),
)

_ALL_OPTIONS = set().union(*(_option_names(s.fn) for s in SAMPLERS))
_BY_NAME = {n.lower(): s for s in SAMPLERS for n in (s.name, *s.aliases)}
# A1111's retired combined samplers had k-diffusion aliases like k_dpmpp_2m_ka / k_dpmpp_3m_sde_exp.
_ALIAS_SUFFIXES = {"_ka": "Karras", "_exp": "Exponential"}


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def get_sampler(name: str) -> SamplerInfo:
    """The sampler called `name` (A1111 name or alias, any case); UserError with suggestions if unknown."""
    info = _BY_NAME.get(name.strip().lower())
    if info is None:
        raise unknown_name("sampler", name, sampler_names(), field="sampler_name")
    return info


def split_sampler_name(name: str) -> tuple[str, str | None]:
    """Split an old combined name ("DPM++ 2M Karras", "k_dpmpp_2m_ka") into (sampler, schedule label).

    A plain sampler name gives (name, None); "Euler a" stays itself. UserError if neither part fits.
    """
    key = name.strip().lower()
    if key in _BY_NAME:
        return _BY_NAME[key].name, None
    for schedule in SCHEDULES:
        for option in (schedule.label, schedule.name, *schedule.aliases):
            suffix = " " + option.lower()
            if key.endswith(suffix) and key[: -len(suffix)].strip() in _BY_NAME:
                return _BY_NAME[key[: -len(suffix)].strip()].name, schedule.label
    for suffix, label in _ALIAS_SUFFIXES.items():
        if key.endswith(suffix) and key[: -len(suffix)] in _BY_NAME:
            return _BY_NAME[key[: -len(suffix)]].name, label
    raise unknown_name("sampler", name, sampler_names(), field="sampler_name")
