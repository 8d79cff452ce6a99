"""The latent-space conditional denoiser: refines the TAEF2 latent of the base decode.

Condition: zb = TAEF2-encode(base); target: z = TAEF2-encode(original). The network
predicts the residual r0 = (z − zb) / ``residual_std`` from (x_t, zb, t); the refined
image is TAEF2-decode(zb + std·r̂0), whose adversarially trained decoder supplies the
texture (measured against a pixel-space refiner at the same CPU budget:
docs/results/refine-validation/latent-probe.md). A trunk of residual blocks at stride 8,
no normalisation, no attention, no upsampling: a latent's output depends only on a
14-latent-pixel neighbourhood, so large latents run in tiles without seams.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdc.models.blocks import timestep_embedding
from cdc.refine.config import RefineConfig
from cdc.refine.model import Block
from cdc.spaces.taef2 import CHANNELS, STRIDE, tiled


class LatentRefineNet(nn.Module):
    """r̂0 = f(x_t, zb, t) on (B, 32, h, w) TAEF2 latents (any h, w)."""

    def __init__(self, cfg: RefineConfig):
        super().__init__()
        self.cfg = cfg
        ch, te = cfg.channels[0], cfg.temb_channels
        self.time = nn.Sequential(nn.Linear(te, te), nn.SiLU(), nn.Linear(te, te), nn.SiLU())
        self.inp = nn.Conv2d(2 * CHANNELS, ch, 3, padding=1)
        self.body = nn.ModuleList(Block(ch, ch, te) for _ in range(cfg.blocks))
        self.out = nn.Conv2d(ch, CHANNELS, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: Tensor, zb: Tensor, t: Tensor) -> Tensor:
        temb = self.time(timestep_embedding(t, self.cfg.temb_channels))
        h = self.inp(torch.cat([x_t, zb], dim=1))
        for b in self.body:
            h = b(h, temb)
        return self.out(F.silu(h))

    def tiled(self, x_t: Tensor, zb: Tensor, t: Tensor) -> Tensor:
        """:meth:`forward` in tiles of ``net_tile`` px (+ ``net_margin``), in latent units:
        equal to the whole-map result up to float rounding (margin > receptive field)."""
        c = x_t.shape[1]
        return tiled(lambda inp: self(inp[:, :c], inp[:, c:], t), torch.cat([x_t, zb], 1),
                     self.cfg.net_tile // STRIDE, self.cfg.net_margin // STRIDE, 1, 1)
