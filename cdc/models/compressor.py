"""CDC: a mean-scale-hyperprior transform coder whose decoder is a conditional diffusion model.

Tensors in, tensors/strings out; no file I/O. Images are in [-1, 1] and already
padded to ``cfg.pad_multiple``. The networks work on the model's *space* (pixels, or a
frozen autoencoder's latent, normalised per channel by ``cfg.space_mean/std``): images
enter through ``space.encode`` and the sampler's result leaves through ``space.decode``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cdc.diffusion import DDIMSampler, NoiseSchedule
from cdc.model_config import CDCConfig
from cdc.models.entropy import MeanScaleHyperprior
from cdc.models.transforms import (
    ContextDecoder,
    analysis_transform,
    hyper_analysis,
    hyper_synthesis,
)
from cdc.models.unet import ConditionalUNet
from cdc.spaces import Space
from cdc.spaces.units import SpaceUnits


class ConditionalDiffusionCompressor(SpaceUnits, nn.Module):
    """Encoder g_a → quantized content latent ŷ (hyperprior-coded) → context → U-Net."""

    def __init__(self, cfg: CDCConfig, space: Space | None = None):
        super().__init__()
        self.cfg = cfg
        self.init_units(space, cfg)
        self.g_a = analysis_transform(cfg)
        self.entropy = MeanScaleHyperprior(hyper_analysis(cfg), hyper_synthesis(cfg),
                                           cfg.hyper_channels, cfg.scale_max)
        self.context = ContextDecoder(cfg)
        self.denoiser = ConditionalUNet(cfg, in_channels=cfg.space_channels)
        self.schedule = NoiseSchedule(cfg.schedule, cfg.train_timesteps)
        self.sampler = DDIMSampler(self.schedule, cfg.parameterization)

    # -- training ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> dict[str, Any]:
        """Noisy-quantized latent, likelihoods and context features (training/rate estimates).

        ``x`` is in model units (for pixel models: the image itself).
        """
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
        y = self.g_a(self.encode_space(x)).float()
        return self.entropy.compress(y)

    @torch.no_grad()
    def decompress_latent(
        self, strings: list[list[bytes]], shape: dict[str, tuple[int, int]]
    ) -> dict[str, Any]:
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
        return self.decode_space(self.sample(y_hat, steps, gamma, seed, autocast_dtype))

    @torch.no_grad()
    def sample(self, y_hat: Tensor, steps: int, gamma: float = 0.0, seed: int | list[int] = 0,
               autocast_dtype: torch.dtype | None = None, hook: Any = None) -> Tensor:
        """DDIM in model units from x_N = γ·noise; ``hook(i, x0) -> x0`` may edit each x0."""
        dev = y_hat.device
        use_autocast = autocast_dtype is not None
        with torch.autocast(dev.type, dtype=autocast_dtype or torch.bfloat16, enabled=use_autocast):
            context = self.context(y_hat)
        s = self.cfg.y_stride
        shape = (y_hat.shape[0], self.cfg.space_channels, y_hat.shape[-2] * s, y_hat.shape[-1] * s)
        x_n = self.sampler.initial_noise(shape, gamma, seed, dev)

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            with torch.autocast(dev.type, dtype=autocast_dtype or torch.bfloat16,
                                enabled=use_autocast):
                return self.denoiser(x_t, t, context)

        return self.sampler.sample(denoise, x_n, steps, clip=self.clip, hook=hook)
