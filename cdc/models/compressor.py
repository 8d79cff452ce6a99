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
from cdc.spaces import PixelSpace, Space

#: Prefix of the frozen space's parameters in a state dict: never stored in weights files.
SPACE_PREFIX = "space."


class ConditionalDiffusionCompressor(nn.Module):
    """Encoder g_a → quantized content latent ŷ (hyperprior-coded) → context → U-Net."""

    def __init__(self, cfg: CDCConfig, space: Space | None = None):
        super().__init__()
        if space is None:
            if cfg.space != "pixel":
                raise ValueError(f"a {cfg.space!r}-space model needs its (pretrained) space")
            space = PixelSpace()
        if (space.name, space.stride, space.channels) != (cfg.space, cfg.space_stride,
                                                          cfg.space_channels):
            raise ValueError(f"space {space.name!r} does not fit the config's {cfg.space!r}")
        self.cfg = cfg
        self.space = space
        self.g_a = analysis_transform(cfg)
        self.entropy = MeanScaleHyperprior(hyper_analysis(cfg), hyper_synthesis(cfg), cfg.hyper_channels,
                                           cfg.scale_max)
        self.context = ContextDecoder(cfg)
        self.denoiser = ConditionalUNet(cfg, in_channels=cfg.space_channels)
        self.schedule = NoiseSchedule(cfg.schedule, cfg.train_timesteps)
        # Pixels are clipped to [-1, 1] at every step; latents have no such box.
        self.sampler = DDIMSampler(self.schedule, cfg.parameterization)
        self.clip = cfg.space == "pixel"
        n = cfg.space_channels
        mean = torch.tensor(cfg.space_mean or (0.0,) * n).view(1, n, 1, 1)
        std = torch.tensor(cfg.space_std or (1.0,) * n).view(1, n, 1, 1)
        self.register_buffer("space_mean", mean, persistent=False)
        self.register_buffer("space_std", std, persistent=False)
        self.normalised = bool(cfg.space_mean or cfg.space_std)

    # -- space ------------------------------------------------------------------------------
    def to_model_units(self, s: Tensor) -> Tensor:
        """Space tensor → what the networks see (per-channel standardised)."""
        return (s - self.space_mean) / self.space_std if self.normalised else s

    def from_model_units(self, u: Tensor) -> Tensor:
        return u * self.space_std + self.space_mean if self.normalised else u

    def encode_space(self, x: Tensor) -> Tensor:
        """Image in [-1, 1] → model units (the frozen space never takes gradients)."""
        if isinstance(self.space, PixelSpace):
            return x
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return self.to_model_units(self.space.encode(x.float()))

    def decode_space(self, u: Tensor) -> Tensor:
        """Model units → image in [-1, 1]."""
        if isinstance(self.space, PixelSpace):
            return u.clamp(-1, 1)
        with torch.autocast(u.device.type, enabled=False):
            return self.space.decode(self.from_model_units(u.float()))

    def network_state_dict(self) -> dict[str, Tensor]:
        """The trained weights only: the frozen space is named by digest, not stored."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(SPACE_PREFIX)}

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
            with torch.autocast(dev.type, dtype=autocast_dtype or torch.bfloat16, enabled=use_autocast):
                return self.denoiser(x_t, t, context)

        return self.sampler.sample(denoise, x_n, steps, clip=self.clip, hook=hook)
