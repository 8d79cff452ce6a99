"""DDIM sampling (Song et al.) from x_N = γ·N(0, I), any number of steps.

The sampler knows nothing of the network: it calls ``denoise(x_t, t) -> output``
where t = n/N_train, as diffusers separates models from schedulers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cdc.diffusion.schedules import NoiseSchedule

Denoiser = Callable[[Tensor, Tensor], Tensor]


class DDIMSampler:
    """Deterministic DDIM (η = 0); stochasticity only through the start x_N = γ·noise."""

    def __init__(self, schedule: NoiseSchedule, parameterization: str):
        self.schedule = schedule
        self.parameterization = parameterization

    def timesteps(self, steps: int) -> list[int]:
        """``steps`` evenly spaced times from N_train-1 down to 0 (inclusive)."""
        n = self.schedule.train_timesteps
        if not 1 <= steps <= n:
            raise ValueError(f"steps must be in 1..{n}, got {steps}")
        if steps == 1:
            return [n - 1]
        return [round((n - 1) * (steps - 1 - i) / (steps - 1)) for i in range(steps)]

    def initial_noise(
        self, shape: tuple[int, ...], gamma: float, seed: int | list[int],
        device: torch.device | str,
    ) -> Tensor:
        """x_N = γ·ε with ε drawn on the CPU so every device gets the same start.

        ``seed`` may be a list with one seed per batch item: item i then starts
        exactly as it would if decoded alone with seed[i].
        """
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if gamma == 0:
            return torch.zeros(shape, device=device)
        seeds = seed if isinstance(seed, (list, tuple)) else [seed] * shape[0]
        if len(seeds) != shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {shape[0]}")
        noise = [torch.randn((1, *shape[1:]), generator=torch.Generator().manual_seed(int(s)))
                 for s in seeds]
        return (gamma * torch.cat(noise)).to(device)

    @torch.no_grad()
    def sample(self, denoise: Denoiser, x_n: Tensor, steps: int, clip: bool = True,
               hook: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """Run DDIM and return the final x0 estimate (in [-1, 1] when ``clip``).

        ``hook(i, x0)`` may replace step i's x0 estimate (CorrDiff's correction); ε is then
        re-derived from it so the trajectory stays consistent.
        """
        times = self.timesteps(steps)
        x = x_n
        x0 = x
        b = x.shape[0]
        for i, n in enumerate(times):
            nt = torch.full((b,), n, device=x.device, dtype=torch.long)
            a = self.schedule.abar(nt)
            out = denoise(x, self.schedule.time(nt)).float()
            x0, eps = NoiseSchedule.split(out, x, a, self.parameterization)
            if clip:
                x0 = x0.clamp(-1, 1)
            if hook is not None:
                x0 = hook(i, x0)
            if clip or hook is not None:
                # Re-derive ε from the clipped/edited x0 so the trajectory stays consistent.
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt().clamp(min=1e-8)
            if i + 1 < len(times):
                a_prev = self.schedule.abar(torch.full_like(nt, times[i + 1]))
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x0.clamp(-1, 1) if clip else x0
