"""Section ``W`` of a refine stream: the per-tile blend weights, as bytes (no torch, so
the ONNX decoder parses streams without it). What the weights mean: :mod:`cdc.refine.blend`.

The decoder applies the same weights to its own identical
refined output. Section ``W`` (``v`` = LEB128 varint)::

    1 byte   W format version (1)
    v        P: number of decode paths (≥ 1)
    P ×      v steps (≥ 1) · v round(100·γ) · v zigzag(seed) · v round(100·bound_dB)
             · 1 byte coding (0: packed bits, 1: zlib of one byte per tile)
             · v n · n bytes of weight indices, tiles in row-major order
    4 bytes  CRC32 of the bytes above (little-endian)

The tile grid follows from the image size in the header, so a path's index count is
known before anything is decoded; any inconsistency is a ``CorruptStreamError``.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from cdc.bitstream import read_varint, write_varint
from cdc.errors import CorruptStreamError

W_VERSION = 1
RAW, DEFLATE = 0, 1
GAMMA_SCALE = 100


@dataclass(frozen=True)
class BlendPath:
    """One decode path the encoder ran, the bound it held, and its tile weight indices."""

    steps: int
    gamma: float  # a multiple of 0.01
    seed: int
    bound_db: float  # a multiple of 0.01
    indices: tuple[int, ...]

    @property
    def key(self) -> tuple[int, float, int]:
        return self.steps, self.gamma, self.seed if self.gamma else 0


def grid(height: int, width: int, tile: int) -> tuple[int, int]:
    return math.ceil(height / tile), math.ceil(width / tile)


def _zigzag(v: int) -> int:
    return (v << 1) ^ (v >> 63) if v >= 0 else ((-v) << 1) - 1


def _unzigzag(v: int) -> int:
    return (v >> 1) if not v & 1 else -((v + 1) >> 1)


def _pack_indices(indices: tuple[int, ...], bits: int) -> tuple[int, bytes]:
    raw = np.zeros(math.ceil(len(indices) * bits / 8), dtype=np.uint8)
    for k, v in enumerate(indices):
        for b in range(bits):
            if v >> b & 1:
                pos = k * bits + b
                raw[pos // 8] |= 1 << (pos % 8)
    packed = raw.tobytes()
    deflated = zlib.compress(bytes(indices), 9)
    return (DEFLATE, deflated) if len(deflated) < len(packed) else (RAW, packed)


def _unpack_indices(coding: int, payload: bytes, count: int, bits: int) -> tuple[int, ...]:
    if coding == RAW:
        need = math.ceil(count * bits / 8)
        if len(payload) != need:
            raise CorruptStreamError(f"section 'W': {len(payload)} index bytes, expected {need}")
        arr = np.frombuffer(payload, dtype=np.uint8)
        bitarr = np.unpackbits(arr, bitorder="little")
        if bitarr[count * bits:].any():
            raise CorruptStreamError("section 'W': non-zero padding bits")
        vals = bitarr[:count * bits].reshape(count, bits) @ (1 << np.arange(bits))
        return tuple(int(v) for v in vals)
    if coding == DEFLATE:
        d = zlib.decompressobj()
        try:
            out = d.decompress(payload, count + 1)  # never inflate more than the grid needs
        except zlib.error as e:
            raise CorruptStreamError(f"section 'W': bad deflate data ({e})") from None
        if len(out) != count or not d.eof or d.unused_data:
            raise CorruptStreamError(f"section 'W': inflated {len(out)} indices, "
                                     f"expected {count}")
        if max(out, default=0) >= 1 << bits:
            raise CorruptStreamError("section 'W': weight index outside the table")
        return tuple(out)
    raise CorruptStreamError(f"section 'W': unknown index coding {coding}")


def pack(paths: list[BlendPath], bits: int) -> bytes:
    out = bytearray([W_VERSION]) + write_varint(len(paths))
    for p in paths:
        coding, payload = _pack_indices(p.indices, bits)
        out += write_varint(p.steps) + write_varint(round(p.gamma * GAMMA_SCALE))
        out += write_varint(_zigzag(p.seed)) + write_varint(round(p.bound_db * GAMMA_SCALE))
        out += bytes([coding]) + write_varint(len(payload)) + payload
    out += struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out)


def unpack(data: bytes, bits: int, tiles: int, max_steps: int) -> list[BlendPath]:
    """Parse and check a whole section W (every path) before any decoding work."""
    if len(data) < 6:
        raise CorruptStreamError("section 'W' truncated")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) & 0xFFFFFFFF != crc:
        raise CorruptStreamError("section 'W' checksum mismatch")
    if body[0] != W_VERSION:
        raise CorruptStreamError(f"section 'W' version {body[0]} is not supported")
    n, pos = read_varint(body, 1, len(body))
    if not 1 <= n <= 16:
        raise CorruptStreamError(f"section 'W': {n} decode paths (1..16 allowed)")
    paths: list[BlendPath] = []
    for _ in range(n):
        steps, pos = read_varint(body, pos, len(body))
        g, pos = read_varint(body, pos, len(body))
        seed, pos = read_varint(body, pos, len(body))
        bound, pos = read_varint(body, pos, len(body))
        if not 1 <= steps <= max_steps:
            raise CorruptStreamError(f"section 'W': {steps} steps (1..{max_steps} allowed)")
        if g > 2 * GAMMA_SCALE or bound > 100 * GAMMA_SCALE:
            raise CorruptStreamError("section 'W': γ or bound out of range")
        if pos >= len(body):
            raise CorruptStreamError("section 'W' truncated")
        coding = body[pos]
        size, pos = read_varint(body, pos + 1, len(body))
        if pos + size > len(body):
            raise CorruptStreamError("section 'W' truncated")
        idx = _unpack_indices(coding, body[pos:pos + size], tiles, bits)
        pos += size
        paths.append(BlendPath(steps, g / GAMMA_SCALE, _unzigzag(seed), bound / GAMMA_SCALE,
                               idx))
    if pos != len(body):
        raise CorruptStreamError("section 'W': trailing bytes")
    if len({p.key for p in paths}) != len(paths):
        raise CorruptStreamError("section 'W': duplicate decode paths")
    return paths
