"""CDC: a mean-scale-hyperprior transform coder whose decoder is a conditional diffusion model.

Tensors in, tensors/strings out; no file I/O. Images are in [-1, 1] and already
padded to ``cfg.pad_multiple``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cdc.config import CDCConfig
from cdc.diffusion import DDIMSampler, NoiseSchedule
from cdc.models.entropy import MeanScaleHyperprior
from cdc.models.transforms import (
    ContextDecoder,
    analysis_transform,
    hyper_analysis,
    hyper_synthesis,
)
from cdc.models.unet import ConditionalUNet


class ConditionalDiffusionCompressor(nn.Module):
    """Encoder g_a → quantized content latent ŷ (hyperprior-coded) → context → U-Net."""

    def __init__(self, cfg: CDCConfig):
        super().__init__()
        self.cfg = cfg
        self.g_a = analysis_transform(cfg)
        self.entropy = MeanScaleHyperprior(hyper_analysis(cfg), hyper_synthesis(cfg), cfg.hyper_channels)
        self.context = ContextDecoder(cfg)
        self.denoiser = ConditionalUNet(cfg)
        self.schedule = NoiseSchedule(cfg.schedule, cfg.train_timesteps)
        self.sampler = DDIMSampler(self.schedule, cfg.parameterization)

    # -- training ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> dict[str, Any]:
        """Noisy-quantized latent, likelihoods and context features (training/rate estimates)."""
        y = self.g_a(x)
        out = self.entropy(y.float())
        return {
            "likelihoods": out["likelihoods"],
            "y_hat": out["y_hat"],
            "context": self.context(out["y_hat"]),
        }

    def aux_loss(self) -> Tensor:
        return self.entropy.aux_loss()

    def update(self) -> None:
        self.entropy.update(force=True)

    # -- coding -----------------------------------------------------------------------------
    @torch.no_grad()
    def compress_latent(self, x: Tensor) -> dict[str, Any]:
        """x (B,3,H,W) in [-1,1] → per-image strings, latent shapes, symbols."""
        y = self.g_a(x).float()
        return self.entropy.compress(y)

    @torch.no_grad()
    def decompress_latent(self, strings: list[list[bytes]], shape: dict[str, tuple[int, int]]) -> dict[str, Any]:
        return self.entropy.decompress(strings, shape)

    @torch.no_grad()
    def render(
        self,
        y_hat: Tensor,
        steps: int,
        gamma: float = 0.0,
        seed: int | list[int] = 0,
        autocast_dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Decode ŷ to an image in [-1, 1] with ``steps`` DDIM steps from x_N = γ·noise."""
        dev = y_hat.device
        use_autocast = autocast_dtype is not None
        with torch.autocast(dev.type, dtype=autocast_dtype or torch.bfloat16, enabled=use_autocast):
            context = self.context(y_hat)
        h, w = y_hat.shape[-2] * 16, y_hat.shape[-1] * 16
        x_n = self.sampler.initial_noise((y_hat.shape[0], 3, h, w), gamma, seed, dev)

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            with torch.autocast(dev.type, dtype=autocast_dtype or torch.bfloat16, enabled=use_autocast):
                return self.denoiser(x_t, t, context)

        return self.sampler.sample(denoise, x_n, steps)
