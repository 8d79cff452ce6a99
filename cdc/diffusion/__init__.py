"""Noise schedules, parameterizations and the DDIM sampler (kept apart from networks)."""

from cdc.diffusion.ddim import DDIMSampler
from cdc.diffusion.schedules import NoiseSchedule

__all__ = ["DDIMSampler", "NoiseSchedule"]
