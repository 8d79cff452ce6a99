"""Spaces: the tensor a codec's networks work on, and how images enter and leave it.

A codec never assumes pixels: it asks its space for the stride, the channel count and
the two maps. :class:`PixelSpace` is the identity (stride 1, 3 channels); :class:`TAEF2Space`
is the frozen pretrained TAEF2 autoencoder (stride 8, 32 channels). Spaces are built
from a small spec dict stored in a model's weights file (``{"name": "taef2", ...}``) plus,
for pretrained spaces, the component state dicts the caller hands in (``cdc`` does no I/O).
"""

from typing import Any

from cdc.spaces.base import Space, space_spec
from cdc.spaces.pixel import PixelSpace
from cdc.spaces.taef2 import TAEF2Space


def build_space(spec: dict[str, Any] | None, components: dict[str, dict[str, Any]] | None = None
                ) -> Space:
    """A space from its spec; ``components`` maps component name → state dict."""
    spec = dict(spec or {"name": "pixel"})
    name = spec.pop("name", "pixel")
    if name == "pixel":
        return PixelSpace()
    if name == "taef2":
        return TAEF2Space.from_components(spec, components or {})
    raise ValueError(f"unknown space {name!r}; known: pixel, taef2")


__all__ = ["PixelSpace", "Space", "TAEF2Space", "build_space", "space_spec"]
