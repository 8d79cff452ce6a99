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

    def decode_bytes(self, h: int, w: int, batch: int = 1) -> int:
        """Estimated peak bytes of :meth:`decode` to (batch, 3, h, w) beyond the image
        itself (which the codecs count): none for a space whose decode is a clamp."""
        return 0

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
