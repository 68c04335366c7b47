"""A discrete-time diffusion model's noise levels, seen in sigma space.

SD checkpoints are trained on 1000 discrete timesteps t with cumulative signal fractions alpha_bar[t];
k-diffusion style samplers work with the equivalent "variance exploding" noise level
sigma = sqrt((1 - alpha_bar) / alpha_bar). `DiscreteSchedule` converts between the two exactly as
k-diffusion's `DiscreteSchedule` (which A1111 wraps around every SD model) does: fractional timesteps
interpolate linearly in log-sigma. It is hand-written rather than imported because the `k-diffusion`
package pulls in torchvision and much more for these few lines, and we need to own the numerics
(float32, A1111's zero-terminal-SNR rescale) to reproduce A1111 images.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A1111 (modules/sd_models.py, "Zero Terminal SNR" noise schedule) pins the last alpha_bar to this small
# value instead of 0 so that sigma_max stays finite (about 4519) for the k-diffusion samplers.
_A1111_ZTSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """A1111's zero-terminal-SNR rescale of alpha_bar (Lin et al. 2023, with A1111's finite last value)."""
    sqrt_ab = alphas_cumprod.double().sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    rescaled = sqrt_ab**2
    rescaled[-1] = _A1111_ZTSNR_LAST_ALPHA_BAR
    return rescaled.to(alphas_cumprod.dtype)


class DiscreteSchedule:
    """The sigmas of a discrete-time model and the sigma <-> fractional-timestep maps.

    `sigmas` is ascending (index = timestep), float32 on CPU, like k-diffusion's CompVisDenoiser.
    """

    def __init__(self, alphas_cumprod: Tensor) -> None:
        ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float32)
        if ac.ndim != 1 or len(ac) < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor with at least two timesteps")
        self.alphas_cumprod = ac
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_betas(
        cls,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_timesteps: int = 1000,
        *,
        beta_schedule: str = "scaled_linear",
        zero_terminal_snr: bool = False,
    ) -> DiscreteSchedule:
        """The schedule of an SD config; defaults are SD1/SD2/SDXL's scaled_linear 0.00085 -> 0.012.

        alpha_bar is computed in float64 and stored as float32, as the original LDM code (and so A1111)
        registers it.
        """
        if beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        else:
            raise ValueError(f"unsupported beta_schedule {beta_schedule!r}")
        alphas_cumprod = torch.cumprod(1 - betas, dim=0).float()
        if zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        return cls(alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional timestep(s) of `sigma`, by linear interpolation in log-sigma (clamped to [0, T-1])."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas.reshape(-1, *([1] * log_sigma.ndim))
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=len(self.log_sigmas) - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return (1 - w) * low_idx + w * high_idx

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Sigma(s) at fractional timestep(s) `t`, interpolating log-sigma linearly."""
        t = torch.as_tensor(t, dtype=torch.float32)
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()
