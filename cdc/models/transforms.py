"""Transform-coding networks: analysis g_a, hyper analysis/synthesis, context decoder."""

from __future__ import annotations

from compressai.layers import GDN
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from cdc.config import CDCConfig


def analysis_transform(cfg: CDCConfig) -> nn.Module:
    """x (3, H) → y (M, H/16): four stride-2 convolutions with GDN (Ballé et al.)."""
    n, m = cfg.encoder_channels, cfg.latent_channels
    return nn.Sequential(
        conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m)
    )


def hyper_analysis(cfg: CDCConfig) -> nn.Module:
    """y (M, H/16) → z (N, H/64), as in CompressAI's MeanScaleHyperprior."""
    m, n = cfg.latent_channels, cfg.hyper_channels
    return nn.Sequential(
        conv(m, n, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
        conv(n, n), nn.LeakyReLU(inplace=True),
        conv(n, n),
    )


def hyper_synthesis(cfg: CDCConfig) -> nn.Module:
    """ẑ (N, H/64) → (scales, means) of y (2M, H/16)."""
    m, n = cfg.latent_channels, cfg.hyper_channels
    return nn.Sequential(
        deconv(n, m), nn.LeakyReLU(inplace=True),
        deconv(m, m * 3 // 2), nn.LeakyReLU(inplace=True),
        conv(m * 3 // 2, m * 2, stride=1, kernel_size=3),
    )


class ContextDecoder(nn.Module):
    """ŷ (M, H/16) → conditioning features at H/8, H/4, H/2, H for the U-Net.

    Returned finest first, so ``features[i]`` has stride 2**i like U-Net level i.
    """

    def __init__(self, cfg: CDCConfig):
        super().__init__()
        ctx = [cfg.unet_channels * m for m in cfg.context_mults]
        levels = len(ctx)
        # y sits at stride 16 = 2**4; level i has stride 2**i.
        self.stages = nn.ModuleList()
        cur = cfg.latent_channels
        for i in reversed(range(levels)):
            steps = 4 - i if i == levels - 1 else 1  # reach the coarsest level in one stage
            layers: list[nn.Module] = []
            for s in range(steps):
                layers += [deconv(cur, ctx[i]), GDN(ctx[i], inverse=True)]
                cur = ctx[i]
            self.stages.append(nn.Sequential(*layers))
        self.levels = levels

    def forward(self, y_hat: Tensor) -> list[Tensor]:
        feats = []
        h = y_hat
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats[::-1]
