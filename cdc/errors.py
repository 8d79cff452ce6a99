"""Exceptions raised by the codec layer.

Every failure a user can cause (bad stream, wrong weights, unsupported image)
has its own class so callers (pipeline, CLI) can map them to clear messages and
exit codes without parsing strings.
"""

from __future__ import annotations


class CodecError(Exception):
    """Base class of every error the codec raises on purpose."""


class BitstreamError(CodecError):
    """The bytes are not a valid stream for this codec."""


class BadMagicError(BitstreamError):
    """The bytes do not start with the container's magic: not one of our streams."""


class UnsupportedVersionError(BitstreamError):
    """The stream was written by a newer (or unknown) container format version."""


class CorruptStreamError(BitstreamError):
    """Checksum mismatch, truncation or malformed sections."""


class ModelMismatchError(BitstreamError):
    """The stream was encoded with other weights than the codec in hand."""


class SymbolMismatchError(BitstreamError):
    """Decoded latent symbols differ from the encoder's: never return a wrong image."""


class WeightsError(CodecError):
    """A weights file is missing, malformed, or its sha256 does not match."""


class ImageError(CodecError):
    """The input image cannot be coded (mode, bit depth, size)."""
