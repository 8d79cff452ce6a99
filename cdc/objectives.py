"""The CDC training objective: λ·rate + (1−ρ)·diffusion loss + ρ·perceptual(x̂0, x0)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from cdc.diffusion.schedules import NoiseSchedule
from cdc.models.compressor import ConditionalDiffusionCompressor

Perceptual = Callable[[Tensor, Tensor], Tensor]  # images in [-1,1] → per-sample distance


def random_window(h: int, w: int, window: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random ``window``-sided patch of an h×w map, each axis
    on its own (a side shorter than ``window`` is taken whole): non-square crops get
    offsets over their whole width, not only over their height."""
    wh, ww = min(window, h), min(window, w)
    top = int(torch.randint(0, h - wh + 1, ()))
    left = int(torch.randint(0, w - ww + 1, ()))
    return top, left, wh, ww


def bits_per_pixel(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """The model's own −log2 p of the quantized latents, per image pixel."""
    return sum(-torch.log2(lik).sum() for lik in likelihoods.values()) / num_pixels


def cdc_loss(
    model: ConditionalDiffusionCompressor,
    x: Tensor,
    lam: float,
    rho: float = 0.0,
    perceptual: Perceptual | None = None,
    snr_clip: tuple[float, float] = (1.0, 5.0),
    image: Tensor | None = None,
    window: int | None = None,
) -> dict[str, Tensor]:
    """One Monte-Carlo estimate of the objective on a batch ``x`` in model units.

    For pixel models ``x`` is the image in [-1, 1]; for latent models it is the
    (normalised) space tensor and ``image`` the aligned pixels, which the perceptual
    term compares with the frozen decoder's image of x̂0 (distortion measured where it
    matters). ε-parameterization uses L1 on ε (CDC); x0-parameterization uses L2 on x0
    weighted by the SNR clipped to ``snr_clip``: the lower clip keeps the weight of the
    noisiest times (which few-step and γ=0 decoding rely on) from vanishing. A fraction
    ``cfg.top_fraction`` of the batch starts where the sampler starts: the top time with
    x_N = γ·ε, γ uniform in [0, 1] (a quarter of those at γ = 0 exactly). For latent
    models the perceptual term is computed on those items only (the 1-step decode that
    matters most), on a random ``window``×``window`` patch of the space (the frozen decoder
    costs ~36 GFLOP per 256² crop, so it sees small patches).
    """
    cfg = model.cfg
    b, _, h, w = x.shape
    out = model(x)
    s = cfg.space_stride
    bpp = bits_per_pixel(out["likelihoods"], b * h * w * s * s)

    sched: NoiseSchedule = model.schedule
    n = torch.randint(0, cfg.train_timesteps, (b,), device=x.device)
    noise = torch.randn_like(x)
    x_t = sched.q_sample(x, n, noise)
    k = round(cfg.top_fraction * b)
    if k:
        gamma = torch.rand(k, device=x.device)
        gamma[: max(1, k // 4)] = 0.0
        n = torch.cat([torch.full((k,), cfg.train_timesteps - 1, device=x.device), n[k:]])
        x_t = torch.cat([gamma.view(k, 1, 1, 1) * noise[:k], x_t[k:]])
    pred = model.denoiser(x_t, sched.time(n), out["context"]).float()
    a = sched.abar(n)
    x0_hat, eps_hat = NoiseSchedule.split(pred, x_t, a, cfg.parameterization)
    if cfg.parameterization == "eps":
        diffusion = (eps_hat - noise).abs().mean()
    else:
        weight = sched.snr(n).clamp(*snr_clip)
        diffusion = (weight * (x0_hat - x) ** 2).mean()

    perc = x.new_zeros(())
    if rho > 0:
        if perceptual is None:
            raise ValueError("rho > 0 needs a perceptual distance")
        if cfg.space == "pixel":
            perc = perceptual(x0_hat.clamp(-1, 1), x).mean()
        else:
            if image is None:
                raise ValueError("a latent model's perceptual term needs the pixel crops")
            sel = slice(0, k or b)
            u, img = x0_hat[sel], image[sel]
            if window and window < max(h, w):
                top, left, wh, ww = random_window(h, w, window)
                u = u[..., top : top + wh, left : left + ww]
                img = img[..., top * s : (top + wh) * s, left * s : (left + ww) * s]
            decoded = model.space.decode_differentiable(model.from_model_units(u))
            perc = perceptual(decoded, img).mean()
    loss = lam * bpp + (1 - rho) * diffusion + rho * perc
    if not math.isfinite(float(loss.detach())):
        raise FloatingPointError(
            f"non-finite loss (bpp={float(bpp):.4f}, diffusion={float(diffusion):.4f})"
        )
    return {"loss": loss, "bpp": bpp.detach(), "diffusion": diffusion.detach(),
            "perceptual": perc.detach()}
