"""The denoiser: a U-Net that sees x_t, the time n/N and the decoded content.

Conditioning is by concatenation (as in CDC): at each level of the down path the
context decoder's feature map of that resolution is concatenated to the
activations before the level's residual blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdc.model_config import CDCConfig
from cdc.models.blocks import (
    Downsample,
    ResBlock,
    SelfAttention,
    Upsample,
    group_norm,
    timestep_embedding,
)


class ConditionalUNet(nn.Module):
    """ε- or x0-predicting U-Net; the output's meaning is set by the config."""

    def __init__(self, cfg: CDCConfig, in_channels: int = 3):
        super().__init__()
        ch = cfg.unet_channels
        chans = [ch * m for m in cfg.channel_mults]
        ctx = [ch * m for m in cfg.context_mults]
        self.levels = len(chans)
        temb_ch = 4 * ch
        self.temb_dim = ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb_ch), nn.SiLU(),
                                      nn.Linear(temb_ch, temb_ch))
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_chans = [ch]
        cur = ch
        for i, out in enumerate(chans):
            blocks = nn.ModuleList()
            attns = nn.ModuleList()
            for j in range(cfg.num_res_blocks):
                # The context joins the first block of each level.
                blocks.append(ResBlock(cur + (ctx[i] if j == 0 else 0), out, temb_ch))
                attns.append(
                    SelfAttention(out, cfg.attention_head_channels)
                    if i in cfg.attention_levels
                    else nn.Identity()
                )
                cur = out
                skip_chans.append(cur)
            level = nn.Module()
            level.blocks, level.attns = blocks, attns
            level.downsample = Downsample(cur) if i < self.levels - 1 else nn.Identity()
            if i < self.levels - 1:
                skip_chans.append(cur)
            self.down.append(level)

        self.mid1 = ResBlock(cur, cur, temb_ch)
        self.mid_attn = SelfAttention(cur, cfg.attention_head_channels)
        self.mid2 = ResBlock(cur, cur, temb_ch)

        self.up = nn.ModuleList()
        for i in reversed(range(self.levels)):
            out = chans[i]
            blocks = nn.ModuleList()
            attns = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(cur + skip_chans.pop(), out, temb_ch))
                attns.append(
                    SelfAttention(out, cfg.attention_head_channels)
                    if i in cfg.attention_levels
                    else nn.Identity()
                )
                cur = out
            level = nn.Module()
            level.blocks, level.attns = blocks, attns
            level.upsample = Upsample(cur) if i > 0 else nn.Identity()
            self.up.append(level)

        self.norm_out = group_norm(cur)
        self.conv_out = nn.Conv2d(cur, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor, context: Sequence[Tensor]) -> Tensor:
        """x: (B,3,H,W) noisy image; t: (B,) time in [0,1]; context[i]: (B,C_i,H/2^i,W/2^i)."""
        temb = self.time_mlp(timestep_embedding(t, self.temb_dim))
        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for j, (block, attn) in enumerate(zip(level.blocks, level.attns)):
                if j == 0:
                    h = torch.cat([h, context[i].to(h.dtype)], dim=1)
                h = attn(block(h, temb))
                skips.append(h)
            if i < self.levels - 1:
                h = level.downsample(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for level in self.up:
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), temb))
            h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
