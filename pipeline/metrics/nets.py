"""Feature trunks exactly as LPIPS and DISTS were trained with them.

Both metrics were fitted on top of torchvision's ImageNet AlexNet / VGG16
``features``; we build the same torchvision modules (no download: ``weights=None``)
and load the converted weights from :mod:`pipeline.metrics.fetch`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models

from pipeline.metrics.fetch import load_trunk


def tv_features(net: str, pretrained: bool = True, trunk: str = "exact") -> nn.Sequential:
    """torchvision ``alexnet().features`` or ``vgg16().features``, frozen, in eval mode.

    ``pretrained=False`` keeps the random init (tests of wiring only); ``trunk="int8"`` loads
    the compact copy made for training losses on a lent GPU
    (:mod:`pipeline.metrics.trunk_int8`), never for an evaluation figure.
    """
    if trunk not in ("exact", "int8"):
        raise ValueError(f"trunk must be 'exact' or 'int8', got {trunk!r}")
    if net == "alexnet":
        feats = models.alexnet(weights=None).features
    elif net == "vgg16":
        feats = models.vgg16(weights=None).features
    else:
        raise ValueError(f"unknown trunk {net!r}")
    if pretrained:
        if trunk == "int8":
            from pipeline.metrics.trunk_int8 import load_int8

            sd = load_int8(net)
        else:
            sd = load_trunk(net)
        feats.load_state_dict({k.removeprefix("features."): v for k, v in sd.items()})
    for p in feats.parameters():
        p.requires_grad_(False)
    return feats.eval()


class L2pooling(nn.Module):
    """DISTS' anti-aliased L2 pooling (Hanning 3×3, stride 2) that replaces VGG's max-pools."""

    def __init__(self, channels: int, filter_size: int = 5, stride: int = 2):
        super().__init__()
        self.padding = (filter_size - 2) // 2
        self.stride = stride
        a = np.hanning(filter_size)[1:-1]
        g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
        g = g / g.sum()
        self.register_buffer("filter", g[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        out = F.conv2d(x**2, self.filter, stride=self.stride, padding=self.padding,
                       groups=x.shape[1])
        return (out + 1e-12).sqrt()
