"""Building and dropping an archive's key table (the derived key -> entry lookup object).

The table's format is :mod:`storage.keytable`; this is its life cycle in a store: built
from the index's entries plus each record's byte offset in its payload object, written
beside the shards under a fresh name, switched in by one attribute update, the previous
object deleted after the switch. Shard writers never touch it. Behind
``Archive.build_index`` and ``Archive.drop_index``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from typing import Any

from .backend import Location, run
from .group import update_attrs
from .keytable import Entry, build_table
from .layout import INDEX_DIR
from .parts import ArchiveParts
from .payload import PayloadReader


def build_key_table(parts: ArchiveParts, loc: Location) -> dict[str, Any]:
    """(Re)build the key table over every completed shard and point the attributes at it;
    returns the ``key_table`` attribute. A store failure becomes one StoreAccessError."""
    index = parts.index
    shards, entries = index.all_entries()
    entries = with_phys(parts.payload, entries)
    path = f"{INDEX_DIR}/keys-{uuid.uuid4().hex}.bin"
    blob, attr = build_table(entries, shards, path)
    try:
        run(loc.set(path, blob))
        old = update_attrs(loc, lambda d: {**d, "key_table": attr})
    except Exception as e:  # noqa: BLE001  (any store failure becomes one line)
        raise loc.access_error(e, "write the key index", writing=True) from e
    parts.attributes.doc = {**parts.attributes.doc, "key_table": attr}
    index.drop_table_cache()
    prev = old.get("key_table") or {}
    if isinstance(prev.get("path"), str) and prev["path"].startswith(f"{INDEX_DIR}/keys-") \
            and prev["path"] != path:
        with contextlib.suppress(Exception):  # best effort; an orphan costs only space
            run(loc.delete(prev["path"]))
    return attr


def drop_key_table(parts: ArchiveParts, loc: Location) -> None:
    """Delete the key table's attribute, then (best effort) its object: lookups go through
    shard metadata until the next build."""
    old = update_attrs(loc, lambda d: {k: v for k, v in d.items() if k != "key_table"})
    parts.attributes.doc = {k: v for k, v in parts.attributes.doc.items() if k != "key_table"}
    parts.index.drop_table_cache()
    p = (old.get("key_table") or {}).get("path")
    if isinstance(p, str) and p.startswith(f"{INDEX_DIR}/keys-"):
        with contextlib.suppress(Exception):  # best effort; an orphan costs only space
            run(loc.delete(p))


def with_phys(payload: PayloadReader, entries: list[Entry]) -> list[Entry]:
    """Entries with their byte offsets in the payload objects (``phys``), reusing the
    ones the entries already carry (from the previous table)."""
    by: dict[int, list[Entry]] = {}
    for e in entries:
        by.setdefault(e.shard, []).append(e)
    todo = [s for s, es in by.items() if any(e.phys is None and e.nbytes for e in es)]

    async def offsets() -> list[list[int | None]]:
        sem = asyncio.Semaphore(16)

        async def one(s: int) -> list[int | None]:
            async with sem:
                return await payload.physical_offsets(s, by[s])

        return await asyncio.gather(*(one(s) for s in todo))

    fresh = dict(zip(todo, run(offsets()))) if todo else {}
    out = []
    for s, es in by.items():
        phys = fresh.get(s)
        for i, e in enumerate(es):
            p = e.phys if phys is None else phys[i]
            out.append(dataclasses.replace(e, phys=p, from_table=False))
    return out
