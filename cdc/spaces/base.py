"""The space contract every codec builds on (see :mod:`cdc.spaces`)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class Space(nn.Module):
    """Images in [-1, 1] (B, 3, H, W) ↔ space tensors (B, channels, H/stride, W/stride).

    ``encode`` expects H and W to be multiples of ``stride`` (codecs pad first, to a
    multiple their own strides derive from this one). A space is frozen: it has no
    trainable parameters and its weights are identified by ``components`` digests.
    """

    name: str = "space"
    stride: int = 1
    channels: int = 3

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """What a weights file records to rebuild this space (name + component digests)."""
        return {"name": self.name}

    def components(self) -> dict[str, str]:
        """Component name → sha256 of the pretrained weights this space needs (none: {})."""
        return {}

    def train(self, mode: bool = True) -> Space:
        return super().train(False)  # frozen: never in training mode


def space_spec(space: Space | None) -> dict[str, Any]:
    return space.spec() if space is not None else {"name": "pixel"}


def build_space(spec: dict[str, Any] | None, components: dict[str, dict[str, Any]] | None = None
                ) -> Space:
    """A space from its spec; ``components`` maps component name → state dict."""
    from cdc.spaces.pixel import PixelSpace
    from cdc.spaces.taef2 import TAEF2Space

    spec = dict(spec or {"name": "pixel"})
    name = spec.pop("name", "pixel")
    if name == "pixel":
        return PixelSpace()
    if name == "taef2":
        return TAEF2Space.from_components(spec, components or {})
    raise ValueError(f"unknown space {name!r}; known: pixel, taef2")
