"""The privileged end-to-end decoder: content latent ŷ → image in one forward pass.

It reads the same ŷ the diffusion decoder is conditioned on (so it adds no bits) and
is trained for distortion (MSE, optionally + LPIPS) with the CDC model frozen. Its
trunk has the shape of CDC's context decoder (deconvolutions with inverse GDN from
H/16 up to H, see ``cdc/models/transforms.py``) and training starts from the base
model's context-decoder weights, whose finest level already carries what the
denoiser needs to know about the image; a small convolutional head maps those
features to the codec's space: RGB in [-1, 1] for pixel models, the TAEF2 latent in
model units for latent ones (trained against the encoder's latent of the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cdc.model_config import CDCConfig, config_from_dict, config_to_dict
from cdc.models.transforms import ContextDecoder

#: State-dict prefix of the decoder inside a corrdiff weights file (beside the CDC keys).
PREFIX = "corrdiff.decoder."


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of the end-to-end decoder's head (the trunk follows the CDC config)."""

    head_channels: int = 48
    head_layers: int = 2  # 3×3 conv + GELU layers before the RGB projection

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        return config_from_dict(cls, d, "decoder config")


class E2EDecoder(nn.Module):
    """ŷ (M, H/16) → x̂ in the space (3 channels at H for pixels, 32 at H/8 for TAEF2):
    context-decoder trunk + conv head.

    For pixels ``forward`` clamps to [-1, 1] outside training (the loss sees the raw
    output); a latent has no such box.
    """

    def __init__(self, cfg: CDCConfig, dcfg: DecoderConfig | None = None):
        super().__init__()
        self.dcfg = dcfg or DecoderConfig()
        self.clip = cfg.space == "pixel"
        self.trunk = ContextDecoder(cfg)
        c0 = cfg.unet_channels * cfg.context_mults[0]
        hc = self.dcfg.head_channels
        layers: list[nn.Module] = [nn.Conv2d(c0, hc, 3, padding=1), nn.GELU()]
        for _ in range(self.dcfg.head_layers - 1):
            layers += [nn.Conv2d(hc, hc, 3, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(hc, cfg.space_channels, 3, padding=1))
        self.head = nn.Sequential(*layers)

    def forward(self, y_hat: Tensor) -> Tensor:
        feats = self.trunk(y_hat)[0]
        out = self.head(feats)
        return out if self.training or not self.clip else out.clamp(-1, 1)

    def init_trunk_from(self, context: ContextDecoder) -> None:
        """Start the trunk from the base model's (trained) context decoder."""
        self.trunk.load_state_dict(context.state_dict())

    def prefixed_state_dict(self) -> dict[str, Tensor]:
        return {PREFIX + k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_prefixed(self, sd: dict[str, Tensor], source: str = "weights") -> None:
        own = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
        if not own:
            raise KeyError(f"{source}: no end-to-end decoder weights ({PREFIX}*)")
        own = {k: v.float() if v.dtype == torch.float16 else v for k, v in own.items()}
        self.load_state_dict(own)


__all__ = ["PREFIX", "DecoderConfig", "E2EDecoder"]
