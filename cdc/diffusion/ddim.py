"""DDIM sampling (Song et al.): the one sampler every codec uses, any number of steps.

The sampler knows nothing of networks: it calls ``denoise(x_t, t) -> output`` where
t = n/N_train, as diffusers separates models from schedulers. CDC starts it from
x_N = γ·noise and runs to n = 0; CorrDiff passes a ``hook`` that edits the x0 estimate
at chosen steps; DiffC starts it at the coded level it decoded, with η noise.

Arithmetic: tensor mode (CDC, CorrDiff) takes ᾱ as float32 tensors; ``scalar`` mode
(DiffC) takes them as float64 Python numbers, which DiffC's encoder and decoder share for
their reverse-channel coding. Each mode keeps its exact operation order, so streams
decode bit-exactly as before the samplers were merged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cdc.diffusion.schedules import NoiseSchedule

Denoiser = Callable[[Tensor, Tensor], Tensor]
X0Hook = Callable[[int, Tensor], Tensor]


class DDIMSampler:
    """DDIM with η ≥ 0; deterministic at η = 0 (stochasticity then only through the start)."""

    def __init__(self, schedule: NoiseSchedule, parameterization: str, scalar: bool = False,
                 min_snr: float = 0.0):
        """``min_snr``: at levels with ᾱ/(1−ᾱ) below it, an unclipped ε-model's x0 estimate
        is the data mean (0 in standardised model units) instead of (x − √(1−ᾱ)ε̂)/√ᾱ,
        which divides the network's error by √ᾱ (2.4e-9 at the cosine schedule's last
        level: x̂0 off by 10⁴ σ). Clipped (pixel) models keep their clip and exact streams."""
        self.schedule = schedule
        self.parameterization = parameterization
        self.scalar = scalar
        self.min_snr = float(min_snr)

    def timesteps(self, steps: int, start: int | None = None, to_zero: bool = True) -> list[int]:
        """``steps`` evenly spaced times from ``start`` (default N_train−1) downwards.

        ``to_zero``: the last is 0 (CDC); else they stop one stride above 0 (DiffC: the
        last network call's x0 estimate is the result).
        """
        n = self.schedule.train_timesteps
        if start is None:
            if not 1 <= steps <= n:
                raise ValueError(f"steps must be in 1..{n}, got {steps}")
            start = n - 1
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not to_zero:
            steps = min(steps, start + 1)
            return [round(start * (steps - i) / steps) for i in range(steps)]
        if steps == 1:
            return [start]
        return [round(start * (steps - 1 - i) / (steps - 1)) for i in range(steps)]

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

    # -- one step ---------------------------------------------------------------------------
    def _abar(self, n: int, like: Tensor) -> Tensor | float:
        if self.scalar:
            return float(self.schedule.alphas_cumprod[n])
        return self.schedule.abar(torch.full((like.shape[0],), n, device=like.device,
                                             dtype=torch.long))

    def mean_replaces(self, a: Tensor | float, clip: bool) -> bool:
        """True where :meth:`predict` ignores the network (x0 = the mean): callers skip it."""
        return (self.scalar and self.parameterization == "eps" and not clip
                and a < self.min_snr * (1 - a))

    def predict(
        self, out: Tensor, x: Tensor, a: Tensor | float, clip: bool
    ) -> tuple[Tensor, Tensor]:
        """Network output at ᾱ = a → (x0, ε), x0 clipped to [-1, 1] (ε re-derived) if ``clip``."""
        if self.scalar:
            if self.parameterization == "x0":
                x0, eps = out, (x - a ** 0.5 * out) / (1 - a) ** 0.5
            elif self.mean_replaces(a, clip):
                return torch.zeros_like(x), x / (1 - a) ** 0.5
            else:
                x0, eps = (x - (1 - a) ** 0.5 * out) / a ** 0.5, out
            if clip:
                x0 = x0.clamp(-1, 1)
                eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
            return x0, eps
        x0, eps = NoiseSchedule.split(out, x, a, self.parameterization)
        if clip:
            x0 = x0.clamp(-1, 1)
        return x0, eps

    def _rederive(self, x: Tensor, x0: Tensor, a: Tensor | float) -> Tensor:
        if self.scalar:
            return (x - a ** 0.5 * x0) / (1 - a) ** 0.5
        return (x - a.sqrt() * x0) / (1 - a).sqrt().clamp(min=1e-8)

    def step(self, x0: Tensor, eps: Tensor, a_t: Tensor | float, a_s: Tensor | float,
             eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """x_s from the estimates at t (DDIM; η > 0 adds the posterior's share of fresh noise)."""
        if self.scalar:
            sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) ** 0.5
            sigma = min(sigma, (1 - a_s) ** 0.5)
            x = a_s ** 0.5 * x0 + max(1 - a_s - sigma ** 2, 0.0) ** 0.5 * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator).to(x.device)
            return x
        if not eta:  # the deterministic path keeps its exact operations (golden streams)
            return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
        sigma = torch.minimum(eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt(),
                              (1 - a_s).sqrt())
        x = a_s.sqrt() * x0 + (1 - a_s - sigma ** 2).clamp(min=0).sqrt() * eps
        # noise drawn on the CPU, as the start's: every device takes the same path
        return x + sigma * torch.randn(x.shape, generator=generator).to(x.device)

    # -- the loop ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, denoise: Denoiser, x_n: Tensor, steps: int, clip: bool = True,
               hook: X0Hook | None = None, start: int | None = None, to_zero: bool = True,
               eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """Run DDIM and return the final x0 estimate (in [-1, 1] when ``clip``).

        ``hook(i, x0)`` may replace step i's x0 estimate (CorrDiff's correction); ε is then
        re-derived from it so the trajectory stays consistent.
        """
        times = self.timesteps(steps, start, to_zero)
        x = x_n
        x0 = x
        for i, n in enumerate(times):
            a = self._abar(n, x)
            t = torch.full((x.shape[0],), n / self.schedule.train_timesteps, device=x.device) \
                if self.scalar else self.schedule.time(
                    torch.full((x.shape[0],), n, device=x.device, dtype=torch.long))
            x0, eps = self.predict(denoise(x, t).float(), x, a, clip)
            if hook is not None:
                x0 = hook(i, x0)
            if not self.scalar and (clip or hook is not None):
                eps = self._rederive(x, x0, a)
            if i + 1 < len(times):
                x = self.step(x0, eps, a, self._abar(times[i + 1], x), eta, generator)
        return x0.clamp(-1, 1) if clip and not self.scalar else x0
