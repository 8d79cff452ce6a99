"""The versioned container every codec of the toolkit writes.

Layout (format version 1; all integers little-endian, ``v`` = unsigned LEB128 varint)::

    offset  size  field
    0       3     magic b"CDC"
    3       1     format version (1)
    4       1     codec id (0 = CDC, 1 = DiffC, 2 = CorrDiff)
    5       1     flags: bit 0 = replicate padding (else reflect), bits 1-3 = SourceMode
    6       8     model digest: first 8 bytes of the weights file's sha256
    14      v     image height (original, before padding)
    .       v     image width
    .       4     CRC32 of the decoded latent symbols (int32 LE, C-order)
    .       ...   sections: tag (1 byte ASCII) + length (v) + payload, repeated
    end-4   4     CRC32 of every byte before it

Padding and latent shapes are derived from the size and the model's strides
(pad to a multiple of 64, content latent at /16, hyper latent at /64).
CDC's sections are ``Z`` (hyper-latent rANS string) then ``Y`` (content-latent
rANS string); other codecs add their own tags. The overhead for an image with
sides < 16384 is 22 + 4 bytes of header/trailer plus 2-4 bytes per section.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from cdc.errors import (
    BadMagicError,
    CorruptStreamError,
    ModelMismatchError,
    UnsupportedVersionError,
)
from cdc.registry import BY_BYTE, CODECS

MAGIC = b"CDC"
FORMAT_VERSION = 1
CODEC_IDS = {e.name: e.byte for e in CODECS.values()}  # one table: cdc.registry
CODEC_NAMES = dict(BY_BYTE)
DIGEST_BYTES = 8
_MIN_SIZE = 3 + 1 + 1 + 1 + DIGEST_BYTES + 1 + 1 + 4 + 4


def write_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end:
            raise CorruptStreamError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CorruptStreamError("varint too long")


def symbols_crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass
class Container:
    """Parsed header plus named sections of one stream."""

    codec: str
    model_digest: bytes
    height: int
    width: int
    symbols_crc: int
    flags: int = 0
    sections: dict[str, bytes] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def pack(self) -> bytes:
        if len(self.model_digest) != DIGEST_BYTES:
            raise ValueError(f"model digest must be {DIGEST_BYTES} bytes")
        out = bytearray(MAGIC)
        out += struct.pack("<BBB", self.version, CODEC_IDS[self.codec], self.flags)
        out += self.model_digest
        out += write_varint(self.height) + write_varint(self.width)
        out += struct.pack("<I", self.symbols_crc)
        for tag, payload in self.sections.items():
            if len(tag) != 1 or not tag.isascii():
                raise ValueError(f"section tag must be one ASCII character, got {tag!r}")
            out += tag.encode() + write_varint(len(payload)) + payload
        out += struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF)
        return bytes(out)

    @classmethod
    def unpack(cls, data: bytes) -> Container:
        """Parse and verify a stream; raise a specific BitstreamError on any problem."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < 4 or data[:3] != MAGIC:
            raise BadMagicError("not a cdc-toolkit stream (bad magic)")
        version = data[3]
        if version != FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"stream format version {version} is not supported (this build reads {FORMAT_VERSION})"
            )
        if len(data) < _MIN_SIZE:
            raise CorruptStreamError(f"stream truncated: {len(data)} bytes")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(body) & 0xFFFFFFFF != crc:
            raise CorruptStreamError("stream checksum mismatch (corrupted or truncated)")
        codec_id, flags = body[4], body[5]
        if codec_id not in CODEC_NAMES:
            raise CorruptStreamError(f"unknown codec id {codec_id}")
        digest = body[6 : 6 + DIGEST_BYTES]
        pos = 6 + DIGEST_BYTES
        end = len(body)
        height, pos = read_varint(body, pos, end)
        width, pos = read_varint(body, pos, end)
        if pos + 4 > end:
            raise CorruptStreamError("stream truncated in header")
        (sym_crc,) = struct.unpack("<I", body[pos : pos + 4])
        pos += 4
        sections: dict[str, bytes] = {}
        while pos < end:
            tag = chr(body[pos])
            length, pos = read_varint(body, pos + 1, end)
            if pos + length > end:
                raise CorruptStreamError(f"section {tag!r} truncated")
            if tag in sections:
                raise CorruptStreamError(f"duplicate section {tag!r}")
            sections[tag] = body[pos : pos + length]
            pos += length
        if height < 1 or width < 1:
            raise CorruptStreamError(f"invalid image size {width}×{height}")
        return cls(CODEC_NAMES[codec_id], digest, height, width, sym_crc, flags, sections, version)

    def require(self, codec: str, digest: bytes, model_name: str = "") -> None:
        """Raise unless this stream was made by ``codec`` with weights ``digest``."""
        if self.codec != codec:
            raise ModelMismatchError(f"stream was written by codec {self.codec!r}, not {codec!r}")
        if self.model_digest != digest[:DIGEST_BYTES]:
            raise ModelMismatchError(
                f"stream was encoded with weights {self.model_digest.hex()}, but the loaded model "
                f"{model_name or ''} has {digest[:DIGEST_BYTES].hex()}: decode with the same weights"
            )

    def section(self, tag: str) -> bytes:
        try:
            return self.sections[tag]
        except KeyError:
            raise CorruptStreamError(f"missing section {tag!r}") from None

    @property
    def header_bytes(self) -> int:
        """Container overhead: everything except section payloads."""
        return len(self.pack()) - sum(len(p) for p in self.sections.values())
