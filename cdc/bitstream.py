"""The versioned container every codec of the toolkit writes.

Layout (format version 1; all integers little-endian, ``v`` = unsigned LEB128 varint)::

    offset  size  field
    0       3     magic b"CDC"
    3       1     format version (1)
    4       1     codec id (0 = CDC, 1 = DiffC, 2 = CorrDiff, 3 = refine)
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

:func:`read_header` is the one parser of the fixed header: :meth:`Container.unpack`,
DiffC's prefix parser and ``cdc info`` all use it, so they accept and refuse the same
streams. It refuses sides outside 1..65535, flag bits 4-6 set and a source mode outside
:class:`SourceMode` (``CorruptStreamError``): no encoder writes those. Nothing here
imports torch.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field

from cdc.errors import (
    BadMagicError,
    CorruptStreamError,
    ModelMismatchError,
    UnsupportedVersionError,
)
from cdc.registry import BY_BYTE, BYTES

MAGIC = b"CDC"
FORMAT_VERSION = 1
CODEC_IDS = BYTES  # name → id byte: cdc.registry's own dicts (register() updates them)
CODEC_NAMES = BY_BYTE  # id byte → name
DIGEST_BYTES = 8
_MIN_SIZE = 3 + 1 + 1 + 1 + DIGEST_BYTES + 1 + 1 + 4 + 4
#: Image sides must be below this (the documented limit; tile larger images upstream).
MAX_SIDE = 1 << 16
FLAG_REPLICATE = 0x01  # bit 0: the encoder padded by replication (else reflection)
_MODE_SHIFT, _MODE_MASK = 1, 0b111
FLAG_FIRST_FRAME = 0x80  # bit 7: the input had several frames; only the first is coded
_RESERVED_FLAGS = 0x70  # bits 4-6: never set by any encoder


class SourceMode(enum.IntEnum):
    """How the input was turned into 8-bit RGB (3 bits in the stream's flags)."""

    RGB = 0
    GRAY = 1  # L / 1-bit: replicated to three channels
    PALETTE = 2  # P: palette expanded (any palette alpha dropped)
    ALPHA_DROPPED = 3  # RGBA / LA / PA: alpha channel discarded
    REDUCED_16BIT = 4  # 16-bit or 32-bit integer samples scaled to 8 bits
    CONVERTED = 5  # CMYK, YCbCr, LAB, HSV: converted by Pillow to RGB

    @property
    def note(self) -> str:
        return {
            SourceMode.RGB: "8-bit RGB input",
            SourceMode.GRAY: "grayscale input, replicated to RGB (decodes as RGB)",
            SourceMode.PALETTE: "palette input, expanded to RGB",
            SourceMode.ALPHA_DROPPED: "alpha channel discarded (not coded)",
            SourceMode.REDUCED_16BIT: "high bit depth input reduced to 8 bits per channel",
            SourceMode.CONVERTED: "non-RGB colour space converted to RGB",
        }[self]


def flags_for(mode: SourceMode | int, replicate: bool = False, first_frame: bool = False) -> int:
    return ((int(replicate) * FLAG_REPLICATE) | (int(mode) << _MODE_SHIFT)
            | (int(first_frame) * FLAG_FIRST_FRAME))


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


@dataclass(frozen=True)
class Header:
    """The fixed start of every stream (up to and including the symbols CRC)."""

    codec: str
    version: int
    flags: int
    model_digest: bytes
    height: int
    width: int
    symbols_crc: int
    end: int  # offset of the first section

    @property
    def mode(self) -> SourceMode:
        return SourceMode((self.flags >> _MODE_SHIFT) & _MODE_MASK)

    @property
    def replicate(self) -> bool:
        return bool(self.flags & FLAG_REPLICATE)

    @property
    def first_frame(self) -> bool:
        """The input was animated or multi-frame and only its first frame is coded."""
        return bool(self.flags & FLAG_FIRST_FRAME)

    @property
    def source_note(self) -> str:
        """What ``cdc info`` says about the input (mode, and dropped frames if any)."""
        extra = "; first frame of a multi-frame input (the others were not coded)"
        return self.mode.note + (extra if self.first_frame else "")

    def validate(self) -> Header:
        """Raise ``CorruptStreamError`` unless size and flags are ones an encoder writes."""
        check_size(self.height, self.width, CorruptStreamError)
        check_flags(self.flags, CorruptStreamError)
        return self


def check_size(height: int, width: int, error: type[Exception] = ValueError) -> None:
    if not (1 <= height < MAX_SIDE and 1 <= width < MAX_SIDE):
        raise error(f"invalid image size {width}×{height}: sides must be in 1..{MAX_SIDE - 1}")


def check_flags(flags: int, error: type[Exception] = ValueError) -> None:
    if not 0 <= flags <= 0xFF or flags & _RESERVED_FLAGS:
        raise error(f"unknown header flags 0x{flags:02x} (bits 4-6 are reserved)")
    mode = (flags >> _MODE_SHIFT) & _MODE_MASK
    if mode not in SourceMode._value2member_map_:
        raise error(f"unknown source mode {mode} in the header flags")


def check_magic(data: bytes) -> None:
    """``BadMagicError`` / ``UnsupportedVersionError`` unless ``data`` starts like a stream."""
    if len(data) < 4 or data[:3] != MAGIC:
        raise BadMagicError("not a cdc-toolkit stream (bad magic)")
    if data[3] != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"stream format version {data[3]} is not supported (this build reads {FORMAT_VERSION})")


def read_header(data: bytes, validate: bool = True) -> Header:
    """Parse the fixed header at the start of ``data`` (a whole stream or a prefix).

    Checks magic, version and codec id always, size and flags when ``validate``
    (callers that verify a checksum first validate after it). Raises ``BadMagicError``,
    ``UnsupportedVersionError`` or ``CorruptStreamError``.
    """
    check_magic(data)
    if len(data) < 6 + DIGEST_BYTES:
        raise CorruptStreamError(f"stream truncated in header: {len(data)} bytes")
    codec_id, flags = data[4], data[5]
    if codec_id not in CODEC_NAMES:
        raise CorruptStreamError(f"unknown codec id {codec_id}")
    digest = bytes(data[6 : 6 + DIGEST_BYTES])
    pos = 6 + DIGEST_BYTES
    height, pos = read_varint(data, pos, len(data))
    width, pos = read_varint(data, pos, len(data))
    if pos + 4 > len(data):
        raise CorruptStreamError("stream truncated in header")
    (sym_crc,) = struct.unpack("<I", data[pos : pos + 4])
    h = Header(CODEC_NAMES[codec_id], data[3], flags, digest, height, width, sym_crc, pos + 4)
    return h.validate() if validate else h


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
        check_size(self.height, self.width)
        check_flags(self.flags)
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
        check_magic(data)
        if len(data) < _MIN_SIZE:
            raise CorruptStreamError(f"stream truncated: {len(data)} bytes")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(body) & 0xFFFFFFFF != crc:
            raise CorruptStreamError("stream checksum mismatch (corrupted or truncated)")
        h = read_header(body)
        pos, end = h.end, len(body)
        sections: dict[str, bytes] = {}
        while pos < end:
            if body[pos] >= 0x80:
                raise CorruptStreamError(f"bad section tag byte 0x{body[pos]:02x} (not ASCII)")
            tag = chr(body[pos])
            length, pos = read_varint(body, pos + 1, end)
            if pos + length > end:
                raise CorruptStreamError(f"section {tag!r} truncated")
            if tag in sections:
                raise CorruptStreamError(f"duplicate section {tag!r}")
            sections[tag] = body[pos : pos + length]
            pos += length
        return cls(h.codec, h.model_digest, h.height, h.width, h.symbols_crc, h.flags, sections,
                   h.version)

    @property
    def header(self) -> Header:
        return Header(self.codec, self.version, self.flags, self.model_digest, self.height,
                      self.width, self.symbols_crc, 0)

    def require(self, codec: str, digest: bytes, model_name: str = "") -> None:
        """Raise unless this stream was made by ``codec`` with weights ``digest``."""
        if self.codec != codec:
            raise ModelMismatchError(f"stream was written by codec {self.codec!r}, not {codec!r}")
        if self.model_digest != digest[:DIGEST_BYTES]:
            raise ModelMismatchError(
                f"stream was encoded with weights {self.model_digest.hex()}, but the loaded model "
                f"{model_name or ''} has {digest[:DIGEST_BYTES].hex()}: "
                "decode with the same weights"
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
