"""Crafting streams as a forger would: edit a header, a section or a DiffC plan, then
recompute every checksum, so that the edit gets past the CRCs and reaches the decoder.

Pure byte editing (no torch, no I/O), shared by tests/test_crafted_streams.py,
tests/test_fuzz_small.py and bench/bench_fuzz.py. It lives in bench/ rather than in cdc/:
it is tooling for attacking the codec, not part of it (tests/test_layering.py).
"""

from __future__ import annotations

import struct
import zlib

from cdc.bitstream import FORMAT_VERSION, MAGIC, Container, read_header, write_varint
from cdc.diffc import stream as st


def crc(b: bytes) -> bytes:
    """The little-endian CRC-32 the container (and DiffC's C section) stores."""
    return struct.pack("<I", zlib.crc32(b) & 0xFFFFFFFF)


def patch_header(data: bytes, *, height: int | None = None, width: int | None = None,
                 flags: int | None = None) -> bytes:
    """``data`` with header fields replaced and every checksum recomputed (the container
    trailer; for DiffC also the plan's C section), as a forger would."""
    h = read_header(data, validate=False)
    head = bytearray(MAGIC) + bytes([FORMAT_VERSION, data[4], h.flags if flags is None else flags])
    head += h.model_digest + write_varint(h.height if height is None else height)
    head += write_varint(h.width if width is None else width) + struct.pack("<I", h.symbols_crc)
    body = bytearray(head + data[h.end : -4])
    if h.codec == "diffc":  # P section, then C = CRC-32 of everything before it
        p_start, p_len = st._section(bytes(body), len(head), "P")
        c_tag = p_start + p_len
        body[c_tag + 2 : c_tag + 6] = crc(bytes(body[:c_tag]))
    return bytes(body) + crc(bytes(body))


def with_sections(data: bytes, **sections: bytes) -> bytes:
    """A CDC (or CorrDiff) stream with some section payloads replaced (checksums
    recomputed)."""
    h = read_header(data, validate=False)
    c = Container.unpack(data)
    out = bytearray(data[: h.end])
    for tag, payload in {**c.sections, **sections}.items():
        out += tag.encode() + write_varint(len(payload)) + payload
    return bytes(out) + crc(bytes(out))


def with_plan(data: bytes, steps: list[st.Step], payloads: list[bytes]) -> bytes:
    """A DiffC stream with its plan and step data replaced (every checksum recomputed:
    per-step CRC-16s, the data CRC in the header, the plan's C section, the trailer)."""
    p = st.parse(data)
    plan = st.Plan(p.plan.seed, p.plan.t_start, steps, p.plan.coding, p.plan.layout)
    return st.pack(p.digest, p.height, p.width, p.flags, plan, payloads)


def recompute_trailer(data: bytes) -> bytes:
    """``data`` with its last four bytes replaced by the CRC-32 of the rest (the container
    trailer); for a DiffC stream whose P section still parses, the C section too."""
    if len(data) < 4:
        return data
    body = bytearray(data[:-4])
    try:
        h = read_header(bytes(body), validate=False)
        if h.codec == "diffc":
            p_start, p_len = st._section(bytes(body), h.end, "P")
            c_tag = p_start + p_len
            if c_tag + 6 <= len(body) and body[c_tag : c_tag + 1] == b"C":
                body[c_tag + 2 : c_tag + 6] = crc(bytes(body[:c_tag]))
    except Exception:  # noqa: BLE001 - a header too broken to find P: the trailer only
        pass
    return bytes(body) + crc(bytes(body))


__all__ = ["crc", "patch_header", "recompute_trailer", "with_plan", "with_sections"]


def smooth_image(h: int, w: int, seed: int):
    """A generated photo (gradients + noise), as bench/bench_jobs.py makes them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(xx / w * 3 + seed), 128 + 100 * np.cos(yy / h * 2),
                     128 + 60 * np.sin((xx + yy) / 17.0)], axis=-1)
    return np.clip(base + rng.normal(0, 8, size=base.shape), 0, 255).astype(np.uint8)
