"""Sampling: noise levels, A1111 sigma schedules, A1111 samplers and seeded noise (see each module)."""

from sfumato.sampling.discrete import DiscreteSchedule
from sfumato.sampling.noise import BrownianTreeNoiseSampler, ImageRNG, ImageRNGNoiseSampler, NoiseSampler
from sfumato.sampling.samplers import (
    SAMPLERS,
    SamplerInfo,
    StepInfo,
    get_sampler,
    sampler_names,
    split_sampler_name,
)
from sfumato.sampling.schedules import SCHEDULES, get_schedule, make_sigmas

__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "BrownianTreeNoiseSampler",
    "DiscreteSchedule",
    "ImageRNG",
    "ImageRNGNoiseSampler",
    "NoiseSampler",
    "SamplerInfo",
    "StepInfo",
    "get_sampler",
    "get_schedule",
    "make_sigmas",
    "sampler_names",
    "split_sampler_name",
]
