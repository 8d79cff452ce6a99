"""A refine stream: the container with the base layer first, then the blend weights.

Sections, in this order::

    B   1 byte downscale (1, 2, 4, 8, or 0x80 | n for n/12: :mod:`cdc.refine.downscale`)
        · 1 byte: bit 7 = bare, bits 0-6 = base quality (0..100, informative) · the AVIF
        file of the (downscaled) image, or when bare its av1C bytes 1..3 and AV1 payload
        (the boxes rebuilt by :mod:`cdc.refine.bare_avif`)
    W   blend weights per decode path (see :mod:`cdc.refine.blend`)

The header's 4-byte symbols field holds the CRC32 of section B's payload, so a *prefix*
that ends with section B (header + B, no W, no trailer) is checked on its own and
decodes to the base layer: the ``preview`` tier reads only that much of a record.
Nothing here imports torch or numpy (``cdc info`` stays light).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdc.bitstream import Container, read_header, read_varint, symbols_crc
from cdc.errors import CorruptStreamError
from cdc.refine import downscale

BASE_TAG, WEIGHTS_TAG = "B", "W"
#: Bytes a reader fetches first to find where section B ends (header ≤ 24 bytes + tag +
#: length varint): see :func:`base_prefix_length`.
PLAN_READ_BYTES = 32


@dataclass(frozen=True)
class Parsed:
    """A stream or a base-layer prefix, checked: size, flags, base section, CRCs."""

    digest: bytes
    height: int
    width: int
    flags: int
    scale: int
    quality: int
    avif: bytes  # the AVIF file, or (bare) av1C[1:4] + the AV1 payload
    weights: bytes | None  # section W (None for a prefix)
    complete: bool
    base_end: int  # bytes of the prefix that ends with section B
    bare: bool = False  # the base layer without its HEIF boxes


def base_prefix_length(head: bytes) -> int:
    """Length of the prefix that ends with section B, from the first bytes of a stream."""
    h = read_header(head)
    if h.codec != "refine":
        raise CorruptStreamError(f"not a refine stream (codec {h.codec!r})")
    if len(head) <= h.end or chr(head[h.end]) != BASE_TAG:
        raise CorruptStreamError("section 'B' must come first")
    size, pos = read_varint(head, h.end + 1, len(head))
    return pos + size


BARE = 0x80  # bit 7 of section B's quality byte


def _check_base(payload: bytes, crc: int) -> tuple[int, int, bytes, bool]:
    if len(payload) < 3:
        raise CorruptStreamError("section 'B' truncated")
    if symbols_crc(payload) != crc:
        raise CorruptStreamError("section 'B' checksum mismatch (corrupted or truncated)")
    scale, quality, bare = payload[0], payload[1] & ~BARE, bool(payload[1] & BARE)
    try:
        downscale.factor(scale)
    except ValueError:
        raise CorruptStreamError(f"section 'B': downscale code {scale} invalid (a stream "
                                 "written by a newer cdc-toolkit, or corrupted)") from None
    if quality > 100:
        raise CorruptStreamError(f"section 'B': base quality {quality} invalid")
    return scale, quality, payload[2:], bare


def parse(data: bytes) -> Parsed:
    """A whole stream (trailer CRC checked) or a prefix ending with section B."""
    data = bytes(data)
    try:
        c = Container.unpack(data)
    except CorruptStreamError:
        end = base_prefix_length(data[:PLAN_READ_BYTES])
        if len(data) != end:
            raise
        h = read_header(data)
        size, pos = read_varint(data, h.end + 1, len(data))
        scale, quality, avif, bare = _check_base(data[pos:pos + size], h.symbols_crc)
        return Parsed(h.model_digest, h.height, h.width, h.flags, scale, quality, avif, None,
                      False, end, bare)
    if c.codec != "refine":
        raise CorruptStreamError(f"not a refine stream (codec {c.codec!r})")
    if list(c.sections) != [BASE_TAG, WEIGHTS_TAG]:
        raise CorruptStreamError(f"sections {list(c.sections)}, expected ['B', 'W']")
    scale, quality, avif, bare = _check_base(c.sections[BASE_TAG], c.symbols_crc)
    return Parsed(c.model_digest, c.height, c.width, c.flags, scale, quality, avif,
                  c.sections[WEIGHTS_TAG], True, base_prefix_length(data[:PLAN_READ_BYTES]),
                  bare)


def describe(data: bytes, config: Any = None) -> dict[str, Any]:
    """What ``cdc info`` shows for a refine stream or base-layer prefix (no model needed)."""
    p = parse(data)
    h = read_header(data)
    out = {
        "codec": "refine",
        "model_digest": p.digest.hex(),
        "width": p.width,
        "height": p.height,
        "source": h.source_note,
        "bytes": len(data),
        "bpp": 8 * len(data) / (p.width * p.height),
        "complete": p.complete,
        "base_layer": f"AVIF{' (bare: boxes rebuilt)' if p.bare else ''}, quality "
                      f"{p.quality}, downscale {downscale.label(p.scale)}, {len(p.avif)} bytes",
        "base_prefix_bytes": p.base_end,
        "weights_bytes": len(p.weights) if p.weights is not None else 0,
    }
    if p.weights is not None and len(p.weights) > 1:
        n, _ = read_varint(p.weights, 1, len(p.weights))
        out["decode_paths"] = n
    return out


def info(data: bytes, digest: bytes) -> dict[str, Any]:
    """:func:`describe`, plus whether the stream names the weights with ``digest``."""
    d = describe(data)
    d["model_matches"] = d["model_digest"] == digest.hex()
    return d
