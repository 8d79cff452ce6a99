"""DDIM with η > 0 in tensor mode (the refine and CDC samplers): the same steps as scalar mode,
reproducible from its generator, and the deterministic path untouched."""

import torch

from cdc.diffusion.ddim import DDIMSampler
from cdc.diffusion.schedules import NoiseSchedule


def shrink(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An x0 'network' that is not the identity: a smooth function of x_t and t."""
    return 0.5 * torch.tanh(x_t) * (1 - t.view(-1, 1, 1, 1) / 2)


def run(sampler: DDIMSampler, eta: float, seed: int | None) -> torch.Tensor:
    x_n = sampler.initial_noise((2, 3, 8, 8), 0.8, 7, "cpu")
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return sampler.sample(shrink, x_n, 4, clip=False, eta=eta, generator=g)


def test_tensor_mode_eta_takes_the_scalar_modes_steps():
    schedule = NoiseSchedule("cosine", 1000)
    tensor, scalar = DDIMSampler(schedule, "x0"), DDIMSampler(schedule, "x0", scalar=True)
    a, b = run(tensor, 1.0, 3), run(scalar, 1.0, 3)
    assert torch.allclose(a, b, atol=1e-4)
    # the noise matters: without it, or with other draws, the result moves
    assert (a - run(tensor, 0.0, None)).abs().max() > 1e-2
    assert (a - run(tensor, 1.0, 4)).abs().max() > 1e-2
    assert torch.equal(a, run(tensor, 1.0, 3))  # and the same generator repeats it


def test_eta_zero_keeps_the_deterministic_operations():
    sampler = DDIMSampler(NoiseSchedule("cosine", 1000), "x0")
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a_t, a_s = (sampler.schedule.abar(torch.full((2,), n, dtype=torch.long)) for n in (800, 400))
    assert torch.equal(sampler.step(x0, eps, a_t, a_s), a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps)
