"""Transform-coding networks: analysis g_a, hyper analysis/synthesis, context decoder."""

from __future__ import annotations

from compressai.layers import GDN
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from cdc.model_config import CDCConfig


def analysis_transform(cfg: CDCConfig) -> nn.Module:
    """Space tensor → y (M, /y_stride).

    Pixels: four stride-2 5×5 convolutions with GDN (Ballé et al.). Other spaces (already
    8× smaller, 32 channels): a 3×3 convolution in, one stride-2 stage per factor of two,
    and a 3×3 convolution out, so the receptive field stays matched to the space's scale.
    """
    n, m = cfg.encoder_channels, cfg.latent_channels
    if cfg.space == "pixel" and cfg.y_stride == 16:
        return nn.Sequential(
            conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m)
        )
    layers: list[nn.Module] = [conv(cfg.space_channels, n, stride=1, kernel_size=3), GDN(n)]
    for _ in range(cfg.y_stride.bit_length() - 1):
        layers += [conv(n, n), GDN(n)]
    layers += [conv(n, m, stride=1, kernel_size=3)]
    return nn.Sequential(*layers)


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
    """ŷ (M, /y_stride) → conditioning features for U-Net levels 0..L-1 (stride 2**i).

    Returned finest first, so ``features[i]`` has stride 2**i like U-Net level i. When ŷ
    is coarser than every level (pixel CDC: y at /16, levels /1../8) one chain of
    transposed convolutions runs from ŷ to the finest level. When ŷ sits inside the
    pyramid (latent CDC: y at /2 of the space), a 3×3 convolution makes ŷ's own level and
    the finer levels come from it by transposed convolutions, the coarser by strided ones,
    so no level is squeezed through a coarser one.
    """

    def __init__(self, cfg: CDCConfig):
        super().__init__()
        ctx = [cfg.unet_channels * m for m in cfg.context_mults]
        levels = len(ctx)
        y_level = cfg.y_stride.bit_length() - 1  # y sits at stride 2**y_level
        self.levels = levels
        self.y_level = y_level
        if y_level >= levels - 1:
            self.stages = nn.ModuleList()
            cur = cfg.latent_channels
            for i in reversed(range(levels)):
                layers: list[nn.Module] = []
                for _ in range(y_level - i if i == levels - 1 else 1):
                    layers += [deconv(cur, ctx[i]), GDN(ctx[i], inverse=True)]
                    cur = ctx[i]
                if i == levels - 1 and y_level == i:
                    layers += [conv(cur, ctx[i], stride=1, kernel_size=3),
                               GDN(ctx[i], inverse=True)]
                cur = ctx[i]
                self.stages.append(nn.Sequential(*layers))
            return
        self.at_y = nn.Sequential(conv(cfg.latent_channels, ctx[y_level], stride=1, kernel_size=3),
                                  GDN(ctx[y_level], inverse=True))
        self.finer = nn.ModuleList(
            nn.Sequential(deconv(ctx[i + 1], ctx[i]), GDN(ctx[i], inverse=True))
            for i in reversed(range(y_level)))
        self.coarser = nn.ModuleList(
            nn.Sequential(conv(ctx[i - 1], ctx[i]), GDN(ctx[i], inverse=True))
            for i in range(y_level + 1, levels))

    def forward(self, y_hat: Tensor) -> list[Tensor]:
        if hasattr(self, "stages"):
            feats = []
            h = y_hat
            for stage in self.stages:
                h = stage(h)
                feats.append(h)
            return feats[::-1]
        mid = self.at_y(y_hat)
        finer, h = [], mid
        for stage in self.finer:
            h = stage(h)
            finer.append(h)
        coarser, h = [], mid
        for stage in self.coarser:
            h = stage(h)
            coarser.append(h)
        return [*finer[::-1], mid, *coarser]
