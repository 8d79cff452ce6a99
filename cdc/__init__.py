"""cdc: diffusion-based image codecs, tensors ↔ bytes (no file or network I/O).

Public entry points: :class:`CDCCodec` (Conditional Diffusion Compression, Yang &
Mandt), the :class:`ImageCodec` protocol all codecs share, the container format in
:mod:`cdc.bitstream`, the codec registry :mod:`cdc.registry`, the decode budget
:class:`DecodeBudget` (:mod:`cdc.limits`) and the base class :class:`cdc.base.BaseCodec`.
Reading weights files is the ``zoo`` package's job (no I/O here).

Importing ``cdc`` (or :mod:`cdc.bitstream`, :mod:`cdc.describe`, :mod:`cdc.registry`,
:mod:`cdc.limits`, :mod:`cdc.errors`) loads no torch: the names that need it are imported
on first use (module ``__getattr__``), so ``cdc info`` and the other commands that code
nothing start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

# ``cdc.describe`` is the CDC describer (the public name since 0.1), which shadows the
# module of the same name: import the module first, then bind the function over it
# (``from cdc.describe import describe_stream`` still finds the module in sys.modules).
from cdc.describe import describe_container as describe  # light: no torch
from cdc.errors import (
    BadMagicError,
    BitstreamError,
    CodecError,
    CorruptStreamError,
    DecodeSettingsError,
    ImageError,
    ModelMismatchError,
    ResourceLimitError,
    SymbolMismatchError,
    UnsupportedVersionError,
    WeightsError,
)
from cdc.limits import DecodeBudget

#: Public names imported on first use: name → "module:attribute".
_LAZY = {
    "BaseCodec": "cdc.base:BaseCodec",
    "CDCCodec": "cdc.codec:CDCCodec",
    "CDCConfig": "cdc.model_config:CDCConfig",
    "DecodeSettings": "cdc.interface:DecodeSettings",
    "ImageCodec": "cdc.interface:ImageCodec",
}


def __getattr__(name: str) -> Any:
    ref = _LAZY.get(name)
    if ref is None:
        raise AttributeError(f"module 'cdc' has no attribute {name!r}")
    module, _, attr = ref.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BadMagicError", "BaseCodec", "BitstreamError", "CDCCodec", "CDCConfig", "CodecError",
    "CorruptStreamError", "DecodeBudget", "DecodeSettings", "DecodeSettingsError",
    "ImageCodec", "ImageError", "ModelMismatchError", "ResourceLimitError",
    "SymbolMismatchError", "UnsupportedVersionError", "WeightsError", "describe",
]
