"""DISTS (Ding et al. 2020): structure and texture similarity on VGG16 features.

Same network as ``DISTS_pytorch`` 0.1: ImageNet-normalised input, torchvision VGG16
with its max-pools replaced by L2 pooling, stages ending at relu1_2 … relu5_3 plus
the raw image, and the learned alpha/beta bundled in that wheel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.metrics.fetch import bundled_file
from pipeline.metrics.nets import L2pooling, tv_features

_STAGES = [(0, 4, None), (5, 9, 64), (10, 16, 128), (17, 23, 256), (24, 30, 512)]
_CHANNELS = [3, 64, 128, 256, 512, 512]


class DISTS(nn.Module):
    """``DISTS()(x, y)`` → (N,) distances for RGB in [0, 1]; ≈0 for x == y."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        vgg = tv_features("vgg16", pretrained)
        stages = []
        for a, b, pool_ch in _STAGES:
            layers = [L2pooling(pool_ch)] if pool_ch else []
            layers += [vgg[i] for i in range(a, b)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        n = sum(_CHANNELS)
        self.alpha = nn.Parameter(torch.full((1, n, 1, 1), 0.1))
        self.beta = nn.Parameter(torch.full((1, n, 1, 1), 0.1))
        if pretrained:
            sd = torch.load(bundled_file("DISTS_pytorch", "weights.pt"), map_location="cpu",
                            weights_only=True)
            self.alpha.data.copy_(sd["alpha"].view(1, n, 1, 1))
            self.beta.data.copy_(sd["beta"].view(1, n, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def features(self, x: Tensor) -> list[Tensor]:
        """Raw image plus the five stage outputs (cache them for a reference image)."""
        h = (x - self.mean) / self.std
        out = [x]
        for s in self.stages:
            h = s(h)
            out.append(h)
        return out

    def compare(self, fx: list[Tensor], fy: list[Tensor]) -> Tensor:
        """Distance (N,) between two :meth:`features` results."""
        c1 = c2 = 1e-6
        w_sum = self.alpha.sum() + self.beta.sum()
        alpha = torch.split(self.alpha / w_sum, _CHANNELS, dim=1)
        beta = torch.split(self.beta / w_sum, _CHANNELS, dim=1)
        d1 = d2 = 0
        for k in range(len(_CHANNELS)):
            xm = fx[k].mean([2, 3], keepdim=True)
            ym = fy[k].mean([2, 3], keepdim=True)
            s1 = (2 * xm * ym + c1) / (xm**2 + ym**2 + c1)
            d1 = d1 + (alpha[k] * s1).sum(1, keepdim=True)
            xv = ((fx[k] - xm) ** 2).mean([2, 3], keepdim=True)
            yv = ((fy[k] - ym) ** 2).mean([2, 3], keepdim=True)
            cov = (fx[k] * fy[k]).mean([2, 3], keepdim=True) - xm * ym
            s2 = (2 * cov + c2) / (xv + yv + c2)
            d2 = d2 + (beta[k] * s2).sum(1, keepdim=True)
        return (1 - (d1 + d2)).view(-1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.compare(self.features(x), self.features(y))
