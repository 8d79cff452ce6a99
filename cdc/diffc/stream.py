"""DiffC's progressive stream: a :class:`cdc.bitstream.Container` any prefix of which decodes.

A complete stream is an ordinary container (codec id 1) with three sections::

    P  coding plan: candidate scheme (1 byte: 0 = seeded strided permutation, candidates
       from torch's CPU generator, all 2^k of a block of chunks at once; 1 = the same
       permutation, candidates addressable by (seed, step, chunk, index): Philox, see
       cdc.diffc.philox),
       index coding (1 byte, 0 = fixed k bits, 1 = rANS with P(i) ∝ 1/(i+1)), stream
       seed (4 bytes LE), start level t_0 (v), number of steps K (v), then per step:
       level decrement t_{j−1} − t_j (v, ≥ 1), n_chunks·16 + (k−1) (v), the step's
       byte length (v), CRC-16 of the step's bytes (2 bytes: low half of its CRC-32)
    C  CRC-32 of every byte of the stream before this section (header + plan)
    D  the steps' coded chunk indices, each step a whole number of bytes, in order

and the container's ``symbols_crc`` is the CRC-32 of D. Everything the decoder
needs (levels, chunk counts, k per step, seed) is in the stream; only the weights
are shared. The plan precedes the data, so a reader that has the first
``prefix_bytes(j)`` bytes has steps 0..j−1: :func:`parse` accepts such a prefix,
verifies the header and plan (C) and each received step (CRC-16), and reports
which steps arrived. A full-length stream must pass the container's CRC; bytes
past the end, a bad plan or a bad received step are :class:`CorruptStreamError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from cdc.bitstream import (
    CODEC_IDS,
    DIGEST_BYTES,
    Container,
    check_magic,
    read_header,
    read_varint,
    write_varint,
)
from cdc.errors import CorruptStreamError

#: Candidate schemes (the plan's first byte). 0: candidates from torch's CPU generator,
#: drawn for whole blocks of chunks (a decoder must draw all 2^k of each chunk); written by
#: models whose config predates scheme 1, and still decoded. 1: counter-based candidates
#: (cdc.diffc.philox): the decoder computes only the chosen one of each chunk.
LAYOUT_STRIDED = 0
LAYOUT_PHILOX = 1
LAYOUTS = (LAYOUT_STRIDED, LAYOUT_PHILOX)
LAYOUT_NAMES = {LAYOUT_STRIDED: "mt19937", LAYOUT_PHILOX: "philox"}
#: Index coding schemes (one byte in the plan).
CODING_FIXED = 0  # k bits per index
CODING_ZIPF = 1  # rANS (CompressAI) with the static law P(i) ∝ 1/(i+1), i < 2^k
MAX_ZIPF_BITS = 12  # 16-bit CDF precision: every one of the 2^k symbols needs mass ≥ 1
CODING_NAMES = {CODING_FIXED: "fixed", CODING_ZIPF: "zipf"}


def packed_size(n_chunks: int, k: int) -> int:
    """Bytes of ``n_chunks`` fixed-width ``k``-bit indices."""
    return (n_chunks * k + 7) // 8


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Step:
    t: int  # the level this step lands on (train index)
    n_chunks: int
    k: int  # 2^k candidates per chunk (1..16)
    nbytes: int = 0  # coded size of the step's indices
    crc16: int = 0


@dataclass
class Plan:
    seed: int
    t_start: int
    steps: list[Step]
    coding: int = CODING_FIXED
    layout: int = LAYOUT_STRIDED

    def pack(self) -> bytes:
        out = bytearray([self.layout, self.coding]) + struct.pack("<I", self.seed & 0xFFFFFFFF)
        out += write_varint(self.t_start) + write_varint(len(self.steps))
        prev = self.t_start
        for s in self.steps:
            if not 0 <= s.t < prev:
                raise ValueError("step levels must decrease from t_start to >= 0")
            out += write_varint(prev - s.t) + write_varint(s.n_chunks * 16 + (s.k - 1))
            out += write_varint(s.nbytes) + struct.pack("<H", s.crc16)
            prev = s.t
        return bytes(out)

    @classmethod
    def unpack(cls, buf: bytes) -> Plan:
        end = len(buf)
        if end < 8:
            raise CorruptStreamError("coding plan truncated")
        layout, coding = buf[0], buf[1]
        if layout not in LAYOUTS:
            raise CorruptStreamError(f"unknown candidate scheme {layout}")
        if coding not in (CODING_FIXED, CODING_ZIPF):
            raise CorruptStreamError(f"unknown index coding {coding}")
        (seed,) = struct.unpack("<I", buf[2:6])
        t_start, pos = read_varint(buf, 6, end)
        n, pos = read_varint(buf, pos, end)
        steps = []
        prev = t_start
        for _ in range(n):
            dt, pos = read_varint(buf, pos, end)
            ck, pos = read_varint(buf, pos, end)
            nbytes, pos = read_varint(buf, pos, end)
            t = prev - dt
            if pos + 2 > end:
                raise CorruptStreamError("coding plan truncated")
            (c16,) = struct.unpack("<H", buf[pos : pos + 2])
            pos += 2
            if dt < 1 or t < 0:
                raise CorruptStreamError("coding plan levels are not decreasing")
            prev = t
            step = Step(t, ck >> 4, (ck & 15) + 1, nbytes, c16)
            if coding == CODING_FIXED or step.n_chunks == 0:
                ok = nbytes == packed_size(step.n_chunks, step.k)
            else:
                ok = step.k <= MAX_ZIPF_BITS and nbytes > 0
            if not ok:
                raise CorruptStreamError(f"coding plan step {len(steps)} is inconsistent")
            steps.append(step)
        if pos != end:
            raise CorruptStreamError("trailing bytes in the coding plan")
        return cls(seed, t_start, steps, coding, layout)


@dataclass
class Parsed:
    """A parsed (possibly partial) DiffC stream."""

    digest: bytes
    height: int
    width: int
    flags: int
    plan: Plan
    data_offset: int  # where step 0's bytes start in the stream
    full_length: int  # length of the complete stream
    received: list[bytes] = field(default_factory=list)  # payloads of fully received steps

    @property
    def complete(self) -> bool:
        return len(self.received) == len(self.plan.steps)

    def prefix_bytes(self, j: int) -> int:
        """Bytes a reader needs to have received steps 0..j−1 (j = 0: just the plan)."""
        return self.data_offset + sum(s.nbytes for s in self.plan.steps[:j])


def pack(digest: bytes, height: int, width: int, flags: int, plan: Plan,
         payloads: list[bytes]) -> bytes:
    if len(payloads) != len(plan.steps):
        raise ValueError("one payload per step")
    steps = [Step(s.t, s.n_chunks, s.k, len(p), crc32(p) & 0xFFFF)
             for s, p in zip(plan.steps, payloads)]
    plan = Plan(plan.seed, plan.t_start, steps, plan.coding, plan.layout)
    data = b"".join(payloads)
    c = Container(codec="diffc", model_digest=digest[:DIGEST_BYTES], height=height, width=width,
                  symbols_crc=crc32(data), flags=flags, sections={"P": plan.pack()})
    head = c.pack()[:-4]  # header + P, without the container trailer
    head += b"C" + write_varint(4) + struct.pack("<I", crc32(head))
    head += b"D" + write_varint(len(data)) + data
    return head + struct.pack("<I", crc32(head))


def _section(buf: bytes, pos: int, tag: str) -> tuple[int, int]:
    """(payload start, declared length) of section ``tag`` at ``pos`` (may be truncated)."""
    if pos >= len(buf):
        raise CorruptStreamError(f"stream truncated before section {tag!r}")
    if chr(buf[pos]) != tag:
        raise CorruptStreamError(f"expected section {tag!r}, found {chr(buf[pos])!r}")
    length, p = read_varint(buf, pos + 1, len(buf))
    return p, length


def parse(data: bytes) -> Parsed:
    """Parse a complete stream or any prefix of it that includes the plan."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    check_magic(data)
    if len(data) < 6 + DIGEST_BYTES:
        raise CorruptStreamError(f"stream truncated in header: {len(data)} bytes")
    if data[4] != CODEC_IDS["diffc"]:
        raise CorruptStreamError(f"codec id {data[4]} is not DiffC ({CODEC_IDS['diffc']})")
    try:
        h = read_header(data, validate=False)  # validated below, after its checksum
        p_start, p_len = _section(data, h.end, "P")
        c_start, c_len = _section(data, p_start + p_len, "C")
        if c_len != 4:
            raise CorruptStreamError("bad plan checksum section")
        if c_start + 4 > len(data):
            raise CorruptStreamError("stream truncated in the coding plan")
    except CorruptStreamError as e:
        raise CorruptStreamError(
            f"{e} ({len(data)} bytes): a DiffC prefix must include the header and coding plan"
        ) from None
    digest, height, width, flags, sym_crc = h.model_digest, h.height, h.width, h.flags, \
        h.symbols_crc
    (plan_crc,) = struct.unpack("<I", data[c_start : c_start + 4])
    if crc32(data[: c_start - 2]) != plan_crc:
        raise CorruptStreamError("header/coding plan checksum mismatch (corrupted stream)")
    h.validate()
    plan = Plan.unpack(data[p_start : p_start + p_len])
    d_start, d_len = _section(data, c_start + 4, "D")
    if d_len != sum(s.nbytes for s in plan.steps):
        raise CorruptStreamError("data section length does not match the coding plan")
    full = d_start + d_len + 4
    if len(data) > full:
        raise CorruptStreamError(f"{len(data) - full} unexpected bytes after the end of the stream")
    if len(data) == full:
        Container.unpack(data)  # whole-stream CRC-32
        if crc32(data[d_start : d_start + d_len]) != sym_crc:
            raise CorruptStreamError("data checksum mismatch")
    out = Parsed(digest, height, width, flags, plan, d_start, full)
    pos = d_start
    for s in plan.steps:
        if pos + s.nbytes > len(data):
            break
        payload = data[pos : pos + s.nbytes]
        if crc32(payload) & 0xFFFF != s.crc16:
            raise CorruptStreamError(f"step {len(out.received)} (level {s.t}) checksum mismatch")
        out.received.append(payload)
        pos += s.nbytes
    return out


def describe(data: bytes, config: Any = None) -> dict[str, Any]:
    """What ``cdc info`` shows for a DiffC stream or prefix (needs no model, nor torch)."""
    p = parse(data)
    h = read_header(data)
    return {
        "codec": "diffc",
        "model_digest": p.digest.hex(),
        "width": p.width,
        "height": p.height,
        "source": h.source_note,
        "bytes": len(data),
        "full_bytes": p.full_length,
        "complete": p.complete,
        "bpp": 8 * len(data) / (p.width * p.height),
        "header_bytes": p.data_offset,
        "steps": len(p.plan.steps),
        "received_steps": len(p.received),
        "levels": [s.t for s in p.plan.steps],
        "chunks": [s.n_chunks for s in p.plan.steps],
        "index_bits": [s.k for s in p.plan.steps],
        "index_coding": CODING_NAMES[p.plan.coding],
        "candidates": LAYOUT_NAMES[p.plan.layout],
        "step_bytes": [s.nbytes for s in p.plan.steps],
        "prefix_bytes": [p.prefix_bytes(j) for j in range(len(p.plan.steps) + 1)],
    }
