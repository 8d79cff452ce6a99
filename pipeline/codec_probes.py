"""What the archive stages ask a codec, through the :class:`cdc.interface.ImageCodec` protocol.

Every codec is a :class:`cdc.base.BaseCodec`, so these are plain method calls (no attribute
probing); the functions remain as the archive stages' one vocabulary for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cdc.interface import ImageCodec


def weights_digest(codec: ImageCodec) -> str:
    """The digest an archive records for the codec's weights (``Archive.check_model``)."""
    return "sha256:" + codec.weights_sha256


def pad_multiple(codec: ImageCodec) -> int:
    """The size multiple ``codec`` pads images to (images of one padded size stack)."""
    return codec.pad_multiple


def codec_config(codec: ImageCodec) -> dict[str, Any]:
    """What an archive records about the codec's decoding defaults (any codec)."""
    return {"pad_multiple": codec.pad_multiple, **codec.decode_defaults()}


def recommended_tiers(codec: ImageCodec) -> dict[str, Any] | None:
    """The tier table the model's weights file recommends (``meta["tiers"]``), if any."""
    return codec.recommended_tiers()


def is_progressive(codec: ImageCodec) -> bool:
    """Whether every prefix of the codec's streams decodes (DiffC)."""
    return codec.progressive


def path_setter(codec: ImageCodec) -> Callable[[Any], None]:
    """``prepare_paths``: codecs whose streams depend on their decode settings (CorrDiff)
    encode one path per setting; the others ignore it."""
    return codec.prepare_paths


def current_paths(codec: ImageCodec) -> list[Any]:
    """The decode paths the codec currently encodes for (CorrDiff; else empty)."""
    return codec.decode_paths()


def batch_decoder(codec: ImageCodec) -> Callable[..., Any]:
    return codec.decompress_batch


def plan_read_bytes(codec: ImageCodec) -> int:
    """How many leading bytes of a stream a progressive codec needs to plan a prefix."""
    return codec.plan_read_bytes


def prefix_length(codec: ImageCodec, head: bytes, bpp: float) -> int:
    """The length of the longest decodable prefix within ``bpp`` (progressive codecs)."""
    return codec.prefix_length(head, bpp=bpp)
