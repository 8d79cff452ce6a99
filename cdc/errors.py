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


class ResourceLimitError(BitstreamError):
    """Decoding the stream would need more than the decode budget allows (pixels, steps,
    symbols, memory, work; :class:`cdc.limits.DecodeBudget`), or more than the stream's own
    bytes can hold. Raised before the work starts; ``limit`` names the budget field."""

    def __init__(self, message: str, limit: str = "", needed: float = 0, allowed: float = 0):
        super().__init__(message)
        self.limit, self.needed, self.allowed = limit, needed, allowed


class DecodeSettingsError(CodecError, ValueError):
    """The decode settings asked for (steps, gamma, seeds) are invalid for this model.

    A ``ValueError`` too, so callers that caught the plain ``ValueError`` still do."""


class WeightsError(CodecError):
    """A weights file is missing, malformed, or its sha256 does not match."""


class ImageError(CodecError):
    """The input image cannot be coded (mode, bit depth, size)."""
