"""The key table checked against the shards' own metadata: what ``verify`` reports about it.

Readers trust the table only as far as a record's CRC confirms it and fall back otherwise;
this is the one place that reads the whole table and compares every slot, so a stale or
damaged table is reported instead of silently costing the slow path.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

from .backend import run
from .errors import CorruptArchiveError
from .keytable import SLOT_SLOW, Entry, TableInfo, decode_entries

if TYPE_CHECKING:
    from .index import KeyIndex
    from .payload import PayloadReader


def check_table(index: KeyIndex, payload: PayloadReader, completed: list[int]) -> list[str]:
    """Every problem of the key table against the shards' own metadata (for ``verify``):
    its object and entries section intact, each covered shard still complete with the same
    records, every key's slot answering with its entry, every ``phys`` where the payload
    object really holds the record. An archive without a table has none."""
    doc = index.table_attr
    if doc is None:
        return []
    where = f"{index.url}: key table"
    try:
        info = TableInfo.from_attr(doc, index.layout)
    except ValueError as e:
        return [f"{where}: key_table attribute: {e}"]
    raw = index.read_object(info.path)
    if raw is None:
        return [f"{where}: {info.path} is missing (readers fall back to shard metadata)"]
    if len(raw) != info.nbytes:
        return [f"{where}: {info.path} is {len(raw)} bytes, expected {info.nbytes}"]
    body = raw[info.entries_offset :]
    if "sha256:" + hashlib.sha256(body).hexdigest() != info.entries_sha256:
        return [f"{where}: {info.path}: entries section fails its SHA-256"]
    try:
        entries = decode_entries(body, info.keys, index.layout)
    except (ValueError, UnicodeDecodeError) as e:
        return [f"{where}: {info.path}: {e}"]
    problems: list[str] = []
    done = set(completed)
    by: dict[int, list[Entry]] = {}
    for e in entries:
        by.setdefault(e.shard, []).append(e)
    for s in sorted(info.shards):
        if s not in done:
            problems.append(f"{where}: covers shard {s}, which is not complete")
            continue
        try:
            truth = index.meta(s).entries()
        except CorruptArchiveError:
            continue  # reported by the shard checks
        mine = [dataclasses.replace(e, phys=None, from_table=False) for e in by.get(s, [])]
        if mine != truth:
            problems.append(f"{where}: its entries for shard {s} differ from the shard's "
                            "metadata")
            continue
        phys = run(payload.physical_offsets(s, truth))
        if any(e.phys is not None and e.phys != p for e, p in zip(by.get(s, []), phys)):
            problems.append(f"{where}: its payload offsets for shard {s} are wrong")
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.key] = counts.get(e.key, 0) + 1
    for e in entries:
        fp, a, b = info.window_span(e.key)
        try:
            got = info.find(e.key, fp, raw[a:b], index.layout)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        if got is None:
            problems.append(f"{where}: no slot answers for {e.key!r}")
        elif counts[e.key] > 1:
            if got.status != SLOT_SLOW:
                problems.append(f"{where}: {e.key!r} is stored twice but its slot says once")
        elif (got.shard, got.row, got.nbytes, got.checksum, got.status) != (
                e.shard, e.row, e.nbytes, e.checksum, e.status):
            problems.append(f"{where}: the slot of {e.key!r} disagrees with its entry")
        if len(problems) > 20:
            problems.append(f"{where}: (more problems not listed)")
            break
    return problems
