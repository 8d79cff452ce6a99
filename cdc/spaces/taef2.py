"""TAEF2: the tiny autoencoder of the FLUX.2 latent space, frozen, as a codec space.

The network is written here to load the MIT-licensed state dicts of madebyollin/taesd
(commit 5cccb12; NOTICE and ``cdc/zoo/weights/taef2_*.pth``): 3×3 convolutions, ReLU,
residual blocks of three convolutions, and in the encoder's three deepest and the
decoder's three first blocks a branch 1×1 conv → GroupNorm(4) → ReLU → 1×1 conv whose
output is added to the block's input. Images in [0, 1] ↔ 32 channels at stride 8.

Large images run in bounded memory, without seams: the GroupNorm branches (the only
non-local layers) all sit at stride 8, so each side is split into a *local* part at
full resolution, run tile by tile with a margin wider than its receptive field (so every
kept output equals the whole-image result up to float rounding), and a cheap part at
stride 8 run on the whole map (64 channels at 1/64 of the pixels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cdc import taef2_memory
from cdc.spaces.base import Space
from cdc.taef2_memory import DECODER_MARGIN, ENCODER_MARGIN, STRIDE
from cdc.tiling import tiled

CHANNELS = 32
ENCODER_FILE = "taef2_encoder.pth"
DECODER_FILE = "taef2_decoder.pth"
#: sha256 of the two state dicts (``../shared/pretrained/taef2/SHA256SUMS``).
ENCODER_SHA256 = "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6"
DECODER_SHA256 = "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5"


def _conv(n_in: int, n_out: int, **kw: Any) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _Clamp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    """relu(conv(x') + x') with x' = x + pool(x) where the block has the GroupNorm branch."""

    def __init__(self, channels: int = 64, pooled: bool = False):
        super().__init__()
        c = channels
        self.conv = nn.Sequential(_conv(c, c), nn.ReLU(), _conv(c, c), nn.ReLU(), _conv(c, c))
        self.pool = (nn.Sequential(nn.Conv2d(c, 4 * c, 1, bias=False), nn.GroupNorm(4, 4 * c),
                                   nn.ReLU(), nn.Conv2d(4 * c, c, 1, bias=False))
                     if pooled else None)
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def encoder_net() -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, 64), _Block()]
    for level in range(3):
        layers += [_conv(64, 64, stride=2, bias=False)]
        layers += [_Block(pooled=level == 2) for _ in range(3)]
    layers += [_conv(64, CHANNELS)]
    return nn.Sequential(*layers)


def decoder_net() -> nn.Sequential:
    layers: list[nn.Module] = [_Clamp(), _conv(CHANNELS, 64), nn.ReLU()]
    layers += [_Block(pooled=True) for _ in range(3)]
    for level in range(3):
        layers += [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]
        layers += [_Block() for _ in range(3 if level < 2 else 1)]
    layers += [_conv(64, 3)]
    return nn.Sequential(*layers)


# Where each network splits into its full-resolution local part and its stride-8 part.
_ENCODER_LOCAL = 11  # layers [0, 11) are local; 11.. hold the GroupNorm branches
_DECODER_LOCAL = 6  # layers [6, ..) are local; [0, 6) hold the GroupNorm branches


class TAEF2Space(Space):
    """Frozen TAEF2: images in [-1, 1] ↔ latents (32, H/8, W/8), tiled above ``tile`` px."""

    name = "taef2"
    stride = STRIDE
    channels = CHANNELS

    def __init__(self, encoder_state: dict[str, Tensor] | None = None,
                 decoder_state: dict[str, Tensor] | None = None,
                 tile: int = 512, encoder_sha256: str = ENCODER_SHA256,
                 decoder_sha256: str = DECODER_SHA256):
        super().__init__()
        if tile % STRIDE or tile < 64:
            raise ValueError(f"tile must be a multiple of {STRIDE} and >= 64, got {tile}")
        self.encoder = encoder_net()
        self.decoder = decoder_net()
        if encoder_state is not None:
            self.encoder.load_state_dict({k: v.float() for k, v in encoder_state.items()})
        if decoder_state is not None:
            self.decoder.load_state_dict({k: v.float() for k, v in decoder_state.items()})
        for p in self.parameters():
            p.requires_grad_(False)
        # NHWC: oneDNN's convolutions then need no layout reorders (1.3× on this 2-core
        # AVX2 VM for a 768×512 encode or decode; results differ by float rounding only).
        self.to(memory_format=torch.channels_last)
        self.tile = tile
        self.digests = {"taef2_encoder": encoder_sha256, "taef2_decoder": decoder_sha256}
        self.eval()

    @classmethod
    def from_components(cls, spec: dict[str, Any], components: dict[str, dict[str, Tensor]]
                        ) -> TAEF2Space:
        missing = {"taef2_encoder", "taef2_decoder"} - set(components)
        if missing:
            raise ValueError(f"TAEF2 space needs the components {sorted(missing)}")
        return cls(components["taef2_encoder"], components["taef2_decoder"],
                   tile=int(spec.get("tile", 512)))

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "tile": self.tile}

    def components(self) -> dict[str, str]:
        return dict(self.digests)

    def encode(self, x: Tensor) -> Tensor:
        x01 = ((x.float() + 1) / 2).contiguous(memory_format=torch.channels_last)
        trunk, head = self.encoder[:_ENCODER_LOCAL], self.encoder[_ENCODER_LOCAL:]
        return head(tiled(trunk, x01, self.tile, ENCODER_MARGIN, STRIDE, 1)).contiguous()

    def decode(self, z: Tensor) -> Tensor:
        head, tail = self.decoder[:_DECODER_LOCAL], self.decoder[_DECODER_LOCAL:]
        t = self.tile // STRIDE
        img = tiled(tail, head(z.contiguous(memory_format=torch.channels_last)), t, DECODER_MARGIN,
                    1, STRIDE)
        return (img * 2 - 1).clamp(-1, 1).contiguous()

    def decode_bytes(self, h: int, w: int, batch: int = 1) -> int:
        """Estimated peak bytes of :meth:`decode` to (batch, 3, h, w), float32, beyond the
        image (:func:`cdc.taef2_memory.decode_bytes`)."""
        return taef2_memory.decode_bytes(self.tile, h, w, batch)

    def decode_differentiable(self, z: Tensor) -> Tensor:
        """Whole-map decode that keeps gradients (training losses after the decoder)."""
        return (self.decoder(z) * 2 - 1).clamp(-1, 1)
