"""Sigma schedules under A1111's schedule-type names ("Schedule type" in the UI and infotext).

`make_sigmas` reproduces A1111 1.10's `KDiffusionSampler.get_sigmas` and `modules/sd_schedulers.py`:
the same formulas, the same default sigma_min/sigma_max (the model's smallest and largest sigma), the
same float32 arithmetic, "Automatic" resolving to the sampler's own default (the model's discrete
sigmas for Euler/LMS/Heun, Karras for DPM++ 2M, Exponential for DPM++ 2M/3M SDE, ...), and the
"discard penultimate sigma" rule of DPM2, DPM2 a and DPM++ 3M SDE (ask for one step more, drop the
next-to-last sigma). A1111's timestep samplers (DDIM, PLMS, UniPC) ignore the schedule type and use
their own timestep grids; here those grids are expressed as sigmas (see `samplers.py` for how they
are walked).

Written from the formulas rather than imported because k-diffusion/A1111 are not dependencies, and the
A1111 choices (which sigma_min, where zeros go, the Align-Your-Steps tables) are what must match.

The result has steps + 1 sigmas ending in 0, except where A1111 itself differs: "KL Optimal" ends at
sigma_min (A1111 does not append the 0, so the last step does not denoise), DDIM/PLMS get
len(range(0, 1000, 1000 // steps)) + 1 sigmas, and UniPC one more than that (its grid includes both
ends, then the 0 marks where A1111 stops).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from sfumato.errors import unknown_name
from sfumato.sampling.discrete import DiscreteSchedule

# NVIDIA's "Align Your Steps" 10-step tables (https://research.nvidia.com/labs/toronto-ai/AlignYourSteps/),
# as A1111 ships them: SDXL's for SDXL models, SD1.5's for everything else.
AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    """A1111's internal name (used by its API and `scheduler` fields)."""
    label: str
    """The UI / infotext label."""
    aliases: tuple[str, ...] = ()
    default_rho: float | None = None


SCHEDULES: tuple[ScheduleInfo, ...] = (
    ScheduleInfo("automatic", "Automatic"),
    ScheduleInfo("uniform", "Uniform"),
    ScheduleInfo("karras", "Karras", default_rho=7.0),
    ScheduleInfo("exponential", "Exponential"),
    ScheduleInfo("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleInfo("sgm_uniform", "SGM Uniform", aliases=("SGMUniform",)),
    ScheduleInfo("kl_optimal", "KL Optimal"),
    ScheduleInfo("align_your_steps", "Align Your Steps"),
    ScheduleInfo("simple", "Simple"),
    ScheduleInfo("normal", "Normal"),
    ScheduleInfo("ddim", "DDIM"),
    ScheduleInfo("beta", "Beta"),
)

_BY_NAME = {n.lower(): s for s in SCHEDULES for n in (s.name, s.label, *s.aliases)}


def get_schedule(name: str) -> ScheduleInfo:
    """The schedule type called `name` (label, internal name or alias, any case); UserError if unknown."""
    info = _BY_NAME.get(name.strip().lower())
    if info is None:
        raise unknown_name("schedule type", name, [s.label for s in SCHEDULES], field="scheduler")
    return info


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) eq. 5: n sigmas evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """n sigmas evenly spaced in log-sigma, then 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """log-sigma a polynomial (power rho) of the step ramp; rho = 1 is `exponential`."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def uniform(n: int, model: DiscreteSchedule) -> Tensor:
    """k-diffusion's `get_sigmas`: n timesteps evenly spaced from T-1 to 0 (the default for Euler etc.)."""
    t = torch.linspace(len(model.sigmas) - 1, 0, n)
    return _append_zero(model.t_to_sigma(t))


def _timestep_linspace(
    n: int, sigma_min: float, sigma_max: float, model: DiscreteSchedule, sgm: bool
) -> Tensor:
    start = model.sigma_to_t(torch.tensor(sigma_max))
    end = model.sigma_to_t(torch.tensor(sigma_min))
    t = (
        torch.linspace(float(start), float(end), n + 1)[:-1]
        if sgm
        else torch.linspace(float(start), float(end), n)
    )
    return _append_zero(model.t_to_sigma(t))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """n + 1 sigmas evenly spaced in arctan(sigma) from sigma_max to sigma_min; no 0, as in A1111."""
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    i = torch.arange(n + 1)
    return torch.tan(i / n * alpha_min + (1.0 - i / n) * alpha_max)


def align_your_steps(n: int, family: str) -> Tensor:
    """NVIDIA's AYS table for the family, log-linearly resampled to n sigmas (float64, as numpy), then 0."""
    table = np.array(AYS_SDXL if family.lower().startswith("sdxl") else AYS_SD1)
    if n != len(table):
        xs = np.linspace(0, 1, len(table))
        ys = np.log(table[::-1])
        table = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return _append_zero(torch.tensor(table, dtype=torch.float32))


def simple(n: int, model: DiscreteSchedule) -> Tensor:
    """Every (T/n)-th model sigma from the top."""
    ss = len(model.sigmas) / n
    return _append_zero(torch.stack([model.sigmas[-(1 + int(x * ss))] for x in range(n)]))


def ddim_timesteps(steps: int, num_timesteps: int = 1000) -> list[int]:
    """A1111's DDIM/PLMS timesteps, ascending: range(0, T, T // steps) + 1 (so 1, 51, ..., 951 for 20)."""
    return [min(t + 1, num_timesteps - 1) for t in range(0, num_timesteps, max(num_timesteps // steps, 1))]


def ddim(n: int, model: DiscreteSchedule) -> Tensor:
    """A1111's "DDIM" schedule type: the model sigmas at the DDIM timesteps, descending, then 0."""
    t = ddim_timesteps(n, len(model.sigmas))
    return _append_zero(model.sigmas[t].flip(0))


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float, beta_: float) -> Tensor:
    """Lee et al. 2024 "Beta Sampling is All You Need", as A1111 has it: Beta-quantiles mapped linearly
    onto [sigma_min, sigma_max]."""
    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta_)
    return _append_zero(torch.tensor(sigma_min + quantiles * (sigma_max - sigma_min), dtype=torch.float32))


def unipc_grid(steps: int, model: DiscreteSchedule, t_start: float = 1.0) -> Tensor:
    """A1111's UniPC grid: N = len(ddim_timesteps(steps)) steps uniform in continuous time t from
    `t_start` down to 1/T ("time_uniform"), with alpha_t interpolated linearly in log(alpha) over the
    discrete timesteps as UniPC's NoiseScheduleVP does; all N + 1 sigmas, then the 0 where A1111's UniPC
    stops. img2img passes its own N and `t_start` through `unipc_grid_from`."""
    return unipc_grid_from(len(ddim_timesteps(steps, len(model.sigmas))), t_start, model)


def unipc_grid_from(n: int, t_start: float, model: DiscreteSchedule) -> Tensor:
    """`n` UniPC steps uniform in continuous time from `t_start` to 1/T (see `unipc_grid`)."""
    total = len(model.sigmas)
    t_cont = torch.linspace(t_start, 1.0 / total, n + 1, dtype=torch.float64)
    index = (t_cont * total - 1).clamp(0, total - 1)
    log_alpha = 0.5 * model.alphas_cumprod.double().log()
    low = index.floor().long().clamp(max=total - 2)
    w = index - low
    la = (1 - w) * log_alpha[low] + w * log_alpha[low + 1]
    return _append_zero(torch.sqrt(torch.exp(-2 * la) - 1).float())


def img2img_sigmas(
    sigmas: Tensor,
    steps: int,
    strength: float,
    sampler: str,
    model: DiscreteSchedule,
    *,
    t_enc: int | None = None,
) -> tuple[Tensor, float]:
    """The part of a `steps`-step schedule img2img runs at denoising `strength`, and the sigma the init
    latents are noised to, by A1111's rule: t_enc = int(min(strength, 0.999) · steps).

    k-diffusion samplers run `sigmas[steps - t_enc - 1:]` (t_enc + 1 steps) from its first sigma.
    DDIM and PLMS walk the last t_enc timesteps of their grid (t_enc − 1 steps, as their txt2img takes
    one step fewer than asked), with the init noised one grid level above the first of them. UniPC runs
    t_enc steps on a grid of its own from just above the t_enc-th DDIM timestep (A1111 passes
    `t_start = t/1000 + 1/1000`), noised like DDIM. t_enc is at least 1 for them (A1111 fails at 0).

    The hires pass gives `t_enc` itself: A1111 runs it with "exact steps" (a schedule of
    int(N / strength) steps, t_enc = N − 1), see `tasks.hires`.
    """
    from sfumato.sampling.samplers import get_sampler

    spec = get_sampler(sampler)
    if t_enc is None:
        t_enc = int(min(strength, 0.999) * steps)
    if not spec.own_grid:
        schedule = sigmas[steps - t_enc - 1 :]
        return schedule, float(schedule[0])
    t_enc = max(t_enc, 1)
    total = len(model.sigmas)
    timesteps = ddim_timesteps(steps, total)
    noise_sigma = float(model.sigmas[timesteps[t_enc]])
    if spec.automatic_schedule == "unipc":
        return unipc_grid_from(t_enc, timesteps[t_enc - 1] / total + 1 / total, model), noise_sigma
    grid = len(sigmas) - 1
    return sigmas[grid - t_enc :], noise_sigma


def lcm_grid(n: int, model: DiscreteSchedule, original_steps: int = 50) -> Tensor:
    """A1111's LCM sigmas: the 50 timesteps LCM was distilled on (19, 39, ..., 999); n timesteps evenly
    spaced between the first and last, log-sigma interpolated between neighbouring LCM sigmas."""
    total = len(model.sigmas)
    skip = total // original_steps
    valid_log = model.sigmas[skip - 1 :: skip].log()
    t = torch.linspace(total - 1, skip - 1, n)
    idx = ((t - (skip - 1)) / skip).clamp(0, original_steps - 1)
    low, high, w = idx.floor().long(), idx.ceil().long(), idx.frac()
    return _append_zero(((1 - w) * valid_log[low] + w * valid_log[high]).exp())


def make_sigmas(
    schedule: str,
    steps: int,
    model: DiscreteSchedule,
    *,
    sampler: str | None = None,
    family: str = "sd1",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    beta_alpha: float = 0.6,
    beta_beta: float = 0.6,
    discard_penultimate: bool = False,
) -> Tensor:
    """The sigmas (float32, CPU, descending) A1111 would sample `steps` steps with.

    `schedule` is a schedule-type name ("Automatic" = the sampler's default); `sampler` an A1111 sampler
    name (needed for "Automatic", the discard rule and the timestep samplers' own grids). `sigma_min`,
    `sigma_max`, `rho`, `beta_alpha`, `beta_beta` are A1111's schedule settings (None = model's / the
    schedule's default); `discard_penultimate` is A1111's "always discard next-to-last sigma" setting.
    `family` picks the Align-Your-Steps table ("sdxl..." for SDXL, anything else SD1.5's).
    """
    from sfumato.sampling.samplers import get_sampler

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    info = get_schedule(schedule)
    spec = get_sampler(sampler) if sampler is not None else None
    key = info.name
    if spec is not None and (spec.own_grid or key == "automatic"):
        key = spec.automatic_schedule
    elif key == "automatic":
        key = "uniform"
    if spec is not None and spec.automatic_schedule == "lcm" and key == "uniform":
        key = "lcm"
    discard = discard_penultimate or (spec is not None and spec.discard_penultimate)
    n = steps + 1 if discard else steps

    lo = model.sigma_min if sigma_min is None or sigma_min == 0 else sigma_min
    hi = model.sigma_max if sigma_max is None or sigma_max == 0 else sigma_max
    default_rho = get_schedule(key).default_rho if key in _BY_NAME else None
    r = rho if rho is not None and rho != 0 and default_rho is not None else default_rho

    builders: dict[str, Callable[[], Tensor]] = {
        "uniform": lambda: uniform(n, model),
        "karras": lambda: karras(n, lo, hi, r),
        "exponential": lambda: exponential(n, lo, hi),
        "polyexponential": lambda: polyexponential(n, lo, hi, r),
        "sgm_uniform": lambda: _timestep_linspace(n, lo, hi, model, sgm=True),
        "kl_optimal": lambda: kl_optimal(n, lo, hi),
        "align_your_steps": lambda: align_your_steps(n, family),
        "simple": lambda: simple(n, model),
        "normal": lambda: _timestep_linspace(n, lo, hi, model, sgm=False),
        "ddim": lambda: ddim(n, model),
        "beta": lambda: beta(n, lo, hi, beta_alpha, beta_beta),
        "unipc": lambda: unipc_grid(n, model),
        "lcm": lambda: lcm_grid(n, model),
    }
    sigmas = builders[key]()
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.to("cpu", torch.float32)
