"""Spaces: the tensor a codec's networks work on, and how images enter and leave it.

A codec never assumes pixels: it asks its space for the stride, the channel count and
the two maps. :class:`PixelSpace` is the identity (stride 1, 3 channels); :class:`TAEF2Space`
is the frozen pretrained TAEF2 autoencoder (stride 8, 32 channels). Spaces are built
from a small spec dict stored in a model's weights file (``{"name": "taef2", ...}``) plus,
for pretrained spaces, the component state dicts the caller hands in (``cdc`` does no I/O).
"""

from cdc.spaces.base import Space, build_space, space_spec
from cdc.spaces.pixel import PixelSpace
from cdc.spaces.taef2 import TAEF2Space

__all__ = ["PixelSpace", "Space", "TAEF2Space", "build_space", "space_spec"]
