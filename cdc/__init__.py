"""cdc: diffusion-based image codecs, tensors ↔ bytes (no file or network I/O).

Public entry points: :class:`CDCCodec` (Conditional Diffusion Compression, Yang &
Mandt), the :class:`ImageCodec` protocol all codecs share, the container format in
:mod:`cdc.bitstream`, the codec registry :mod:`cdc.registry` and the base class
:class:`cdc.base.BaseCodec`. Reading weights files is the ``zoo`` package's job (no I/O here).
"""

from cdc.base import BaseCodec
from cdc.codec import CDCCodec, describe
from cdc.config import CDCConfig
from cdc.errors import (
                        BadMagicError,
                        BitstreamError,
                        CodecError,
                        CorruptStreamError,
                        ImageError,
                        ModelMismatchError,
                        SymbolMismatchError,
                        UnsupportedVersionError,
                        WeightsError,
)
from cdc.interface import DecodeSettings, ImageCodec

__all__ = [
    "BadMagicError", "BaseCodec", "BitstreamError", "CDCCodec", "CDCConfig", "CodecError",
    "CorruptStreamError",
    "DecodeSettings", "ImageCodec", "ImageError", "ModelMismatchError", "SymbolMismatchError",
    "UnsupportedVersionError", "WeightsError", "describe",
]
