"""LPIPS v0.1 (Zhang et al. 2018) with AlexNet or VGG16, without a model hub.

Same computation as the ``lpips`` package's ``LPIPS(net=..., version="0.1")``:
scaling layer, torchvision trunk sliced at the five ReLUs, unit-normalised
channels, squared differences weighted by the learned 1×1 "lin" layers, spatial
mean. Trunk weights come from :mod:`pipeline.metrics.fetch`, lin layers from the
``lpips`` wheel. Differentiable, so training can use it as a loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.metrics.fetch import bundled_file
from pipeline.metrics.nets import tv_features

_SLICES = {"alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)],
           "vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]}
_CHANNELS = {"alex": [64, 192, 384, 256, 256], "vgg": [64, 128, 256, 512, 512]}
_TRUNK = {"alex": "alexnet", "vgg": "vgg16"}


def _unit(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """``LPIPS(net="alex"|"vgg")(x, y)`` → (N,) distances for RGB in [0, 1]; 0 for x == y.

    ``trunk="int8"``: the compact trunk copy, for a training loss only (see
    :mod:`pipeline.metrics.trunk_int8`)."""

    def __init__(self, net: str = "alex", pretrained: bool = True, trunk: str = "exact"):
        super().__init__()
        if net not in _SLICES:
            raise ValueError(f"unknown LPIPS net {net!r}; use 'alex' or 'vgg'")
        self.net_name = net
        feats = tv_features(_TRUNK[net], pretrained, trunk)
        self.slices = nn.ModuleList(nn.Sequential(*[feats[i] for i in range(a, b)])
                                    for a, b in _SLICES[net])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS[net])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        if pretrained:
            path = bundled_file("lpips", f"weights/v0.1/{net}.pth")
            sd = torch.load(path, map_location="cpu", weights_only=True)
            for k, lin in enumerate(self.lins):
                lin.weight.data.copy_(sd[f"lin{k}.model.1.weight"])
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def features(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised activations of the five layers (cache them for a reference image)."""
        h = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for s in self.slices:
            h = s(h)
            out.append(_unit(h))
        return out

    def compare(self, fx: list[Tensor], fy: list[Tensor]) -> Tensor:
        """Distance (N,) between two :meth:`features` results."""
        total = 0
        for lin, a, b in zip(self.lins, fx, fy):
            total = total + lin((a - b) ** 2).mean(dim=(2, 3))
        return total.view(-1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.compare(self.features(x), self.features(y))
