"""The base layer without AVIF's boxes: 3 bytes of AV1 configuration and the AV1 payload.

An AVIF file is an AV1 payload inside HEIF boxes (ftyp, meta: hdlr, pitm, iloc, iinf,
iprp with ispe/pixi/av1C/colr/ipma; mdat): 275 bytes on every image libavif writes for us,
of which the stream keeps 3; the other 272 are 5–18 % of a Kodak stream at 0.12–0.03 bpp.
Everything in those boxes but the av1C's three variable bytes follows from what the
stream's header already says (the base's size) and from the base encoder's fixed settings
(8-bit RGB → YUV 4:2:0, sRGB/BT.601 full-range nclx), so the encoder keeps only
``av1C[1:4] + payload`` and the decoder writes the boxes again.

The encoder checks that the rebuilt file equals libavif's byte for byte (:func:`strip`
returns None otherwise, and the stream keeps the whole file): the decoder always hands
libavif exactly the bytes libavif wrote.
"""

from __future__ import annotations

import struct

from cdc.errors import CorruptStreamError

#: What libavif writes for Pillow's 8-bit RGB input: BT.709 primaries, sRGB transfer,
#: BT.601 matrix, full range.
NCLX = struct.pack(">HHHB", 1, 13, 6, 0x80)
HEADER = 3  # av1C bytes 1..3 (byte 0 is the fixed marker/version 0x81)


def _box(kind: bytes, content: bytes) -> bytes:
    return struct.pack(">I", 8 + len(content)) + kind + content


def _full(kind: bytes, content: bytes, version: int = 0, flags: int = 0) -> bytes:
    return _box(kind, struct.pack(">I", version << 24 | flags) + content)


def _config(av1c: bytes) -> tuple[bytes, int, int]:
    """Check av1C bytes 1..3; (brand, channels, bit depth) they imply."""
    profile = av1c[0] >> 5
    high, twelve, mono = av1c[1] >> 6 & 1, av1c[1] >> 5 & 1, av1c[1] >> 4 & 1
    sub_x, sub_y = av1c[1] >> 3 & 1, av1c[1] >> 2 & 1
    if av1c[2] >> 5 or profile > 2:
        raise CorruptStreamError("section 'B': invalid AV1 configuration")
    depth = 12 if twelve else 10 if high else 8
    brand = b""
    if depth in (8, 10) and not mono and (sub_x, sub_y) == (1, 1):
        brand = b"MA1B"
    elif depth in (8, 10) and not mono and (sub_x, sub_y) == (0, 0):
        brand = b"MA1A"
    return brand, 1 if mono else 3, depth


def rebuild(bare: bytes, width: int, height: int) -> bytes:
    """``av1C[1:4] + payload`` of a ``width``×``height`` base → the AVIF file."""
    if len(bare) <= HEADER:
        raise CorruptStreamError("section 'B': bare base layer truncated")
    av1c, payload = bare[:HEADER], bare[HEADER:]
    brand, channels, depth = _config(av1c)
    ftyp = _box(b"ftyp", b"avif" + bytes(4) + b"avifmif1miaf" + brand)
    ipco = _box(b"ipco", _full(b"ispe", struct.pack(">II", width, height))
                + _full(b"pixi", bytes([channels]) + bytes([depth]) * channels)
                + _box(b"av1C", b"\x81" + av1c) + _box(b"colr", b"nclx" + NCLX))
    ipma = _full(b"ipma", struct.pack(">IHB", 1, 1, 4) + bytes([0x01, 0x02, 0x83, 0x04]))
    infe = _full(b"infe", struct.pack(">HH", 1, 0) + b"av01Color\x00", version=2)

    def meta(offset: int) -> bytes:
        iloc = _full(b"iloc", bytes([0x44, 0x00]) + struct.pack(">HHHHII", 1, 1, 0, 1, offset,
                                                                   len(payload)))
        return _full(b"meta", _full(b"hdlr", bytes(4) + b"pict" + bytes(13))
                     + _full(b"pitm", struct.pack(">H", 1)) + iloc
                     + _full(b"iinf", struct.pack(">H", 1) + infe) + _box(b"iprp", ipco + ipma))

    offset = len(ftyp) + len(meta(0)) + 8  # the payload starts after mdat's own header
    return ftyp + meta(offset) + _box(b"mdat", payload)


def strip(avif: bytes, width: int, height: int) -> bytes | None:
    """libavif's file → ``av1C[1:4] + payload``, or None where the rebuilt file would not
    be byte-identical (a layout this module does not write: keep the whole file)."""
    at = avif.find(b"av1C")
    mdat = avif.find(b"mdat")
    if at < 4 or mdat < 4 or struct.unpack(">I", avif[at - 4:at])[0] != 12:
        return None
    bare = avif[at + 5:at + 8] + avif[mdat + 4:]
    try:
        same = rebuild(bare, width, height) == avif
    except CorruptStreamError:
        return None
    return bare if same else None
