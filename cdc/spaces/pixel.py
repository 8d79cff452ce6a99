"""Pixel space: the identity (the pixel-space models cdc-small, diffc-small, corrdiff-small)."""

from __future__ import annotations

from torch import Tensor

from cdc.spaces.base import Space


class PixelSpace(Space):
    name = "pixel"
    stride = 1
    channels = 3

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, z: Tensor) -> Tensor:
        return z.clamp(-1, 1)
