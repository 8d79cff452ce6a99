"""The key table: key -> (shard, row, offset, nbytes, ...) in one object, one ranged GET.

Why: without it a reader finds a key by reading every completed shard's row arrays (on
S3 about 19 requests per shard before the first record). The table answers a lookup
with one ranged GET of a few fixed-size slots; ``keys()`` with one GET of its entries
section. It is *derived* data: built from committed shards (``Archive.build_index``, run
by every ``cdc archive`` job at its end), never written by shard writers, so shard commits
stay independent and resumable. Shards committed after a build are simply not covered:
readers look those up the old way, and only those.

Object ``index/keys-<token>.bin``, described by the ``key_table`` attribute (so the one
``zarr.json`` GET that opens an archive also says where and how to look):

* **slots**: ``n_slots`` x 48 bytes, an ordered linear-probing hash table. A key's home
  slot is ``fp_hi64 * home_slots >> 64`` with ``fp`` = BLAKE2b-96 of its UTF-8 bytes;
  entries are placed in fingerprint order at ``max(home, previous + 1)``, so every key lies
  within ``window`` slots of its home (the builder records the largest displacement). A
  reader fetches slots ``[home, home + window)`` and picks the one whose fingerprint
  matches. Empty slots are all zero (status 0). A slot's offset is the record's byte
  offset in its shard's payload *object* when the record is one contiguous run there
  (flag bit 0: always, for payloads this package writes), so the read that follows is one
  ranged GET without the shard index (8 KiB for the default geometry).
* **entries**: every record in (shard, row) order: a fixed part then the key and the error
  string (``keys()``, ``info()`` of failed records), checked against ``entries_sha256``.

Slot status ``SLOT_SLOW`` marks a key the table cannot answer alone (stored in several
shards, or a fingerprint shared by two keys): the reader takes the slow path, which raises
the right error. Everything read is bounds-checked against the archive's layout before it
is used; a table that fails a check is ignored (reads fall back) and ``verify`` reports it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .layout import Layout
from .records import MAX_SIDE, STATUS_NAMES

TABLE_FORMAT = 1
# fp, shard, row, offset, nbytes, crc, h, w, status, flags (bit 0: offset is physical)
SLOT = struct.Struct("<12sIIQIIIIBB2x")
SLOT_BYTES = SLOT.size  # 48
# shard, row, offset, nbytes, crc, h, w, status, physical offset (NO_PHYS: none), klen, elen
ENTRY = struct.Struct("<IIQIIIIBQHH")
NO_PHYS = 2**64 - 1
SLOT_SLOW = 255
LOAD = 4  # home slots per key: the window stays ~5 slots up to 10^6 keys
MAX_WINDOW = 64  # a table needing more is refused by readers (a hostile or broken build)
MAX_ERROR_BYTES = 65535


@dataclass(frozen=True)
class Entry:
    """Where one record is and what a reader needs to return it, without its shard's
    metadata: the unit the key index works in."""

    key: str
    shard: int
    row: int
    offset: int  # in the shard's payload; -1: not known (a slot gave ``phys`` instead)
    nbytes: int
    checksum: int
    status: int
    height: int
    width: int
    error: str | None = ""  # None: not known from a slot (a failed record's message)
    phys: int | None = None  # byte offset in the payload *object*, when one contiguous run
    from_table: bool = False  # read from the key table, not checked against the manifest


def fingerprint(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=12).digest()


def home_slot(fp: bytes, home_slots: int) -> int:
    return (int.from_bytes(fp[:8], "big") * home_slots) >> 64


def check_entry(e: Entry, layout: Layout) -> str | None:
    """Why ``e`` cannot be a record of an archive with ``layout`` (None: plausible)."""
    if not 0 <= e.shard < layout.max_shards:
        return f"shard {e.shard} is outside 0..{layout.max_shards - 1}"
    if not 0 <= e.row < layout.shard_size:
        return f"row {e.row} is outside 0..{layout.shard_size - 1}"
    cap = layout.max_shard_bytes
    if e.nbytes < 0 or e.nbytes > cap:
        return f"{e.nbytes} bytes exceed the shard's {cap}"
    if e.offset != -1 and not 0 <= e.offset <= cap - e.nbytes:
        return f"bytes {e.offset}+{e.nbytes} exceed the shard's {cap}"
    if e.phys is not None and not 0 <= e.phys <= cap - e.nbytes:
        return f"object bytes {e.phys}+{e.nbytes} exceed the shard's {cap}"
    if e.offset == -1 and e.phys is None:
        return "no offset"
    if e.status not in STATUS_NAMES:
        return f"status {e.status} is unknown"
    if not (0 <= e.height <= MAX_SIDE and 0 <= e.width <= MAX_SIDE):
        return f"size {e.height}x{e.width} is out of range"
    return None


@dataclass(frozen=True)
class TableInfo:
    """The ``key_table`` attribute, validated: where the table is and how to read it."""

    path: str
    n_slots: int
    home_slots: int
    window: int
    keys: int
    entries_offset: int
    entries_bytes: int
    entries_sha256: str
    shards: frozenset[int]

    @property
    def nbytes(self) -> int:
        return self.entries_offset + self.entries_bytes

    @classmethod
    def from_attr(cls, doc: Any, layout: Layout) -> TableInfo:
        """Parse and bound-check the attribute; ValueError says what is wrong."""
        if not isinstance(doc, dict) or doc.get("format") != TABLE_FORMAT:
            raise ValueError("unknown key_table format")
        try:
            path = doc["path"]
            ints = {k: doc[k] for k in ("n_slots", "home_slots", "window", "keys",
                                        "entries_offset", "entries_bytes")}
            sha, ranges = doc["entries_sha256"], doc["shards"]
        except KeyError as e:
            raise ValueError(f"key_table lacks {e}") from e
        if not (isinstance(path, str) and path.startswith("index/keys-") and ".." not in path):
            raise ValueError(f"key_table path {path!r} is not under index/")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in ints.values()):
            raise ValueError("key_table sizes must be non-negative ints")
        if not 1 <= ints["window"] <= MAX_WINDOW:
            raise ValueError(f"key_table window {ints['window']} is outside 1..{MAX_WINDOW}")
        if ints["keys"] > layout.rows or ints["home_slots"] < 1:
            raise ValueError("key_table counts are out of range")
        if ints["n_slots"] != ints["home_slots"] + ints["window"] - 1:
            raise ValueError("key_table n_slots does not match home_slots + window - 1")
        if ints["entries_offset"] != ints["n_slots"] * SLOT_BYTES:
            raise ValueError("key_table entries_offset does not follow the slots")
        if not isinstance(sha, str) or not isinstance(ranges, list):
            raise ValueError("key_table entries_sha256/shards have the wrong type")
        shards: set[int] = set()
        for r in ranges:
            if (not isinstance(r, list) or len(r) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
                    or not 0 <= r[0] < r[1] <= layout.max_shards):
                raise ValueError(f"key_table shard range {r!r} is invalid")
            shards.update(range(r[0], r[1]))
        return cls(path=path, shards=frozenset(shards), entries_sha256=sha, **ints)

    def window_span(self, key: str) -> tuple[bytes, int, int]:
        """``(fingerprint, start, end)``: the byte range of ``key``'s candidate slots."""
        fp = fingerprint(key)
        home = home_slot(fp, self.home_slots)
        return fp, home * SLOT_BYTES, (home + self.window) * SLOT_BYTES

    def find(self, key: str, fp: bytes, raw: bytes, layout: Layout) -> Entry | None:
        """The slot for ``fp`` among the fetched ``raw`` slots, as an :class:`Entry`
        (status ``SLOT_SLOW`` kept: the caller must take the slow path); None if absent.
        ValueError when a slot fails its bounds check."""
        if len(raw) != self.window * SLOT_BYTES:
            raise ValueError(f"key table slots read {len(raw)} bytes, expected "
                             f"{self.window * SLOT_BYTES}")
        for i in range(self.window):
            f, shard, row, off, n, crc, h, w, status, flags = SLOT.unpack_from(
                raw, i * SLOT_BYTES)
            if status == 0 or f != fp:
                continue
            phys = off if flags & 1 else None
            e = Entry(key, shard, row, -1 if flags & 1 else off, n, crc, status, h, w,
                      "" if status == 1 else None, phys, True)
            if status != SLOT_SLOW and (why := check_entry(e, layout)):
                raise ValueError(f"slot of {key!r}: {why}")
            if status != SLOT_SLOW and shard not in self.shards:
                raise ValueError(f"slot of {key!r}: shard {shard} is not covered by the table")
            return e
        return None


def shard_ranges(shards: Iterable[int]) -> list[list[int]]:
    """Sorted shard numbers as ``[start, end)`` runs (compact in the attribute)."""
    out: list[list[int]] = []
    for s in sorted(set(shards)):
        if out and out[-1][1] == s:
            out[-1][1] = s + 1
        else:
            out.append([s, s + 1])
    return out


def encode_entries(entries: Sequence[Entry]) -> bytes:
    parts = []
    for e in entries:
        kb = e.key.encode("utf-8")
        eb = (e.error or "").encode("utf-8")[:MAX_ERROR_BYTES]
        phys = NO_PHYS if e.phys is None else e.phys
        parts.append(ENTRY.pack(e.shard, e.row, e.offset, e.nbytes, e.checksum, e.height,
                                e.width, e.status, phys, len(kb), len(eb)) + kb + eb)
    return b"".join(parts)


def decode_entries(raw: bytes, n: int, layout: Layout) -> list[Entry]:
    """The entries section back; ValueError on any inconsistency (sizes, bounds, UTF-8)."""
    out: list[Entry] = []
    pos = 0
    for _ in range(n):
        if pos + ENTRY.size > len(raw):
            raise ValueError("entries section is truncated")
        shard, row, off, nb, crc, h, w, status, phys, kl, el = ENTRY.unpack_from(raw, pos)
        pos += ENTRY.size
        if pos + kl + el > len(raw):
            raise ValueError("entries section is truncated")
        key = raw[pos : pos + kl].decode("utf-8")
        err = raw[pos + kl : pos + kl + el].decode("utf-8")
        pos += kl + el
        e = Entry(key, shard, row, off, nb, crc, status, h, w, err,
                  None if phys == NO_PHYS else phys, True)
        if why := check_entry(e, layout):
            raise ValueError(f"entry of {key!r}: {why}")
        out.append(e)
    if pos != len(raw):
        raise ValueError("entries section has trailing bytes")
    return out


def build_table(entries: Sequence[Entry], shards: Iterable[int], path: str
                ) -> tuple[bytes, dict[str, Any]]:
    """The table object's bytes and its ``key_table`` attribute, for ``entries`` (every
    record of the completed ``shards``, in (shard, row) order, duplicates included)."""
    by_fp: dict[bytes, list[Entry]] = {}
    for e in entries:
        by_fp.setdefault(fingerprint(e.key), []).append(e)
    home_slots = max(1, LOAD * len(by_fp))
    placed: list[tuple[int, bytes, Entry, bool]] = []
    prev, window = -1, 1
    for fp in sorted(by_fp):
        group = by_fp[fp]
        home = home_slot(fp, home_slots)
        pos = max(home, prev + 1)
        prev = pos
        window = max(window, pos - home + 1)
        slow = len(group) > 1  # a key in several shards, or two keys sharing a fingerprint
        placed.append((pos, fp, group[0], slow))
    if window > MAX_WINDOW:  # cannot happen with a uniform hash at LOAD 4; refuse loudly
        raise RuntimeError(f"key table window {window} > {MAX_WINDOW}")
    n_slots = home_slots + window - 1
    slots = bytearray(n_slots * SLOT_BYTES)
    for pos, fp, e, slow in placed:
        SLOT.pack_into(slots, pos * SLOT_BYTES, fp, e.shard, e.row,
                       e.offset if e.phys is None else e.phys, e.nbytes, e.checksum, e.height,
                       e.width, SLOT_SLOW if slow else e.status, 0 if e.phys is None else 1)
    body = encode_entries(entries)
    attr = {
        "format": TABLE_FORMAT, "path": path, "n_slots": n_slots, "home_slots": home_slots,
        "window": window, "keys": len(entries), "entries_offset": len(slots),
        "entries_bytes": len(body),
        "entries_sha256": "sha256:" + hashlib.sha256(body).hexdigest(),
        "shards": shard_ranges(shards),
    }
    return bytes(slots) + body, attr
