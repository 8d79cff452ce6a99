"""Variance-preserving noise schedules: ᾱ_n for n = 0 .. N_train-1."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cosine_alphas_cumprod(n: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal's cosine schedule (ᾱ clipped so β ≤ 0.999)."""
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    ac = f / f[0]
    betas = (1 - ac[1:] / ac[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


def linear_alphas_cumprod(n: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Tensor:
    """Ho et al.'s linear β schedule, rescaled so any N_train spans the same range."""
    scale = 1000.0 / n
    betas = torch.linspace(beta_start * scale, beta_end * scale, n, dtype=torch.float64)
    return torch.cumprod(1 - betas.clamp(max=0.999), dim=0)


class NoiseSchedule:
    """ᾱ table plus the conversions between ε, x0 and x_t both sampler and loss need."""

    def __init__(self, name: str, train_timesteps: int):
        fns = {"cosine": cosine_alphas_cumprod, "linear": linear_alphas_cumprod}
        if name not in fns:
            raise ValueError(f"unknown schedule {name!r}; choose from {sorted(fns)}")
        self.name = name
        self.train_timesteps = train_timesteps
        self.alphas_cumprod = fns[name](train_timesteps)  # float64, CPU

    def abar(self, n: Tensor) -> Tensor:
        """ᾱ at integer times n, as float32 on n's device, shaped for broadcasting."""
        return self.alphas_cumprod.to(n.device)[n].float()[:, None, None, None]

    def q_sample(self, x0: Tensor, n: Tensor, noise: Tensor) -> Tensor:
        a = self.abar(n)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def snr(self, n: Tensor) -> Tensor:
        a = self.abar(n)
        return a / (1 - a)

    def time(self, n: Tensor) -> Tensor:
        """The network's time input n/N_train."""
        return n.float() / self.train_timesteps

    @staticmethod
    def split(out: Tensor, x_t: Tensor, a: Tensor, parameterization: str) -> tuple[Tensor, Tensor]:
        """Network output → (x0 estimate, ε estimate) under either parameterization."""
        if parameterization == "x0":
            x0 = out
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt().clamp(min=1e-8)
        else:
            eps = out
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt().clamp(min=1e-8)
        return x0, eps
