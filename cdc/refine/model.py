"""The conditional denoiser: residual U-Net on (noisy residual, upsampled base decode, time).

No normalisation layers and no attention, so the output at a pixel depends only on a
bounded neighbourhood: large images run in overlapping tiles (:meth:`RefineNet.tiled`)
without seams. Upsampling is resize-then-convolve (bilinear, then 3×3), never a
transposed convolution (whose stride leaves a periodic pattern in flat regions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdc.models.blocks import timestep_embedding
from cdc.refine.config import RefineConfig


class Block(nn.Module):
    """Residual block with a time scale/shift, no normalisation."""

    def __init__(self, in_ch: int, out_ch: int, temb: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb, 2 * out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(x))
        scale, shift = self.temb(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(h * (1 + scale) + shift))
        return self.skip(x) + h


class RefineNet(nn.Module):
    """r̂0 = f(x_t, base, t): everything in [-1, 1] image units except the residuals."""

    def __init__(self, cfg: RefineConfig):
        super().__init__()
        self.cfg = cfg
        ch, te = cfg.channels, cfg.temb_channels
        self.time = nn.Sequential(nn.Linear(te, te), nn.SiLU(), nn.Linear(te, te), nn.SiLU())
        self.stem = nn.Conv2d(6 * 4, ch[0], 3, padding=1)  # 2×2 pixel-unshuffle of 6 channels
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            self.down.append(nn.ModuleList(Block(prev if j == 0 else c, c, te)
                                           for j in range(cfg.blocks)))
            prev = c
            if i + 1 < len(ch):
                self.pool.append(nn.Conv2d(c, ch[i + 1], 3, stride=2, padding=1))
                prev = ch[i + 1]
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for i in range(len(ch) - 2, -1, -1):
            self.up_conv.append(nn.Conv2d(ch[i + 1], ch[i], 3, padding=1))
            self.up.append(nn.ModuleList(Block(2 * ch[i] if j == 0 else ch[i], ch[i], te)
                                         for j in range(cfg.blocks)))
        hc = cfg.head_channels
        self.head_in = nn.Conv2d(ch[0], hc, 1)
        self.head = nn.Sequential(nn.Conv2d(hc + 6, hc, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(hc, 3, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x_t: Tensor, base: Tensor, t: Tensor) -> Tensor:
        """(B, 3, H, W) noisy residual, base decode, (B,) time n/N → residual estimate.

        H and W must be multiples of ``cfg.multiple`` (use :meth:`padded`)."""
        temb = self.time(timestep_embedding(t, self.cfg.temb_channels))
        inp = torch.cat([x_t, base], dim=1)
        h = self.stem(F.pixel_unshuffle(inp, 2))
        skips = []
        for i, blocks in enumerate(self.down):
            for b in blocks:
                h = b(h, temb)
            if i < len(self.pool):
                skips.append(h)
                h = self.pool[i](h)
        for conv, blocks in zip(self.up_conv, self.up):
            skip = skips.pop()
            h = conv(F.interpolate(h, size=skip.shape[-2:], mode="bilinear",
                                   align_corners=False))
            h = torch.cat([h, skip], dim=1)
            for b in blocks:
                h = b(h, temb)
        h = F.interpolate(self.head_in(h), size=inp.shape[-2:], mode="bilinear",
                          align_corners=False)
        return self.head(torch.cat([F.silu(h), inp], dim=1))

    def padded(self, x_t: Tensor, base: Tensor, t: Tensor) -> Tensor:
        """:meth:`forward` on any size: replicate-pad to the multiple, crop back."""
        h, w = base.shape[-2:]
        m = self.cfg.multiple
        ph, pw = -h % m, -w % m
        if ph or pw:
            x_t = F.pad(x_t, (0, pw, 0, ph), mode="replicate")
            base = F.pad(base, (0, pw, 0, ph), mode="replicate")
        return self(x_t, base, t)[..., :h, :w]

    def tiled(self, x_t: Tensor, base: Tensor, t: Tensor) -> Tensor:
        """:meth:`padded` in overlapping tiles of ``net_tile`` (+ ``net_margin`` each side)
        when the image is larger: bounded memory, and no seams (each tile keeps only its
        centre, whose receptive field lies inside the tile)."""
        cfg = self.cfg
        h, w = base.shape[-2:]
        size, margin = cfg.net_tile, cfg.net_margin
        if h <= size + 2 * margin and w <= size + 2 * margin:
            return self.padded(x_t, base, t)
        out = torch.empty_like(base, dtype=torch.float32)
        for top in range(0, h, size):
            for left in range(0, w, size):
                t0, l0 = max(0, top - margin), max(0, left - margin)
                t1, l1 = min(h, top + size + margin), min(w, left + size + margin)
                r = self.padded(x_t[..., t0:t1, l0:l1], base[..., t0:t1, l0:l1], t).float()
                bh, bw = min(size, h - top), min(size, w - left)
                out[..., top:top + bh, left:left + bw] = \
                    r[..., top - t0:top - t0 + bh, left - l0:left - l0 + bw]
        return out
