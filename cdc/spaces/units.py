"""Model units: a space's tensor standardised per channel, the tensor diffusion runs on.

Shared by every codec model that diffuses in a space (the CDC compressor, the DiffC prior),
so images enter and leave a space in one way: pad, ``encode_space`` (frozen, no gradients),
diffuse in model units, ``decode_space``. Pixels are the identity (clipped to [-1, 1]);
a pretrained latent has no such box, so ``clip`` is for pixels only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cdc.spaces.base import Space
from cdc.spaces.pixel import PixelSpace

#: State-dict prefix of a model's frozen space: named by digest in weights files, never stored.
SPACE_PREFIX = "space."


class SpaceUnits:
    """Mixin for an ``nn.Module`` with a ``space``: call :meth:`init_units` in ``__init__``."""

    space: Space

    def init_units(self: nn.Module, space: Space | None, cfg: Any) -> None:
        """Attach ``space`` (None: pixels) to the model of ``cfg`` (a config with the
        :class:`cdc.model_config.OnSpace` fields), checked against what the config names."""
        if space is None:
            if cfg.space != "pixel":
                raise ValueError(f"a {cfg.space!r}-space model needs its (pretrained) space")
            space = PixelSpace()
        if (space.name, space.stride, space.channels) != (cfg.space, cfg.space_stride,
                                                          cfg.space_channels):
            raise ValueError(f"space {space.name!r} does not fit the config's {cfg.space!r}")
        n, mean, std = cfg.space_channels, cfg.space_mean, cfg.space_std
        self.space = space
        self.clip = cfg.space == "pixel"
        self.register_buffer("space_mean", torch.tensor(mean or (0.0,) * n).view(1, n, 1, 1),
                             persistent=False)
        self.register_buffer("space_std", torch.tensor(std or (1.0,) * n).view(1, n, 1, 1),
                             persistent=False)
        self.normalised = bool(mean or std)

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

    def network_state_dict(self: nn.Module) -> dict[str, Tensor]:
        """The trained weights only: the frozen space is named by digest, not stored."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(SPACE_PREFIX)}


__all__ = ["SPACE_PREFIX", "SpaceUnits"]
