"""``cdc info`` for a stream of any codec, without a model (the codec byte picks the describer)."""

from __future__ import annotations

from typing import Any

from cdc.bitstream import MAGIC
from cdc.errors import BadMagicError, CorruptStreamError
from cdc.registry import BY_BYTE, entry, resolve


def describe_stream(data: bytes, config: Any = None) -> dict[str, Any]:
    """What ``cdc info`` shows; ``config`` (the model's, when known) refines latent shapes."""
    if len(data) < 5 or data[:3] != MAGIC:
        raise BadMagicError("not a cdc-toolkit stream (bad magic)")
    name = BY_BYTE.get(data[4])
    if name is None:
        raise CorruptStreamError(f"unknown codec id {data[4]}")
    describer = resolve(entry(name).describe)
    return describer(data, config) if config is not None else describer(data)
