"""The key index: key -> :class:`~storage.keytable.Entry` (shard, row, offset, ...).

Two sources. With a key table (:mod:`storage.keytable`, named by the ``key_table``
attribute) a lookup is one ranged GET of a few slots, no listing and no shard metadata;
listings read the table's entries section once. Shards the table does not cover (committed
after it was built), and archives without one, are read the original way: each completed
shard's row arrays (key, status, sizes, checksum, offset, nbytes, error: about 100 bytes
per record), checked against the manifest digest and kept as a
:class:`~storage.shard_meta.ShardMeta`. A missing key triggers one re-list, so a
long-lived reader sees new shards.

``ShardMeta``, ``entry_info`` and ``entry_record`` live in :mod:`storage.shard_meta` (and
are importable from here too); ``verify``'s check of the key table against the shards is
:func:`storage.table_check.check_table`.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from .arrays import ShardArrays
from .attributes import ArchiveAttributes
from .backend import Location, run
from .errors import ArchiveError, CorruptArchiveError, DuplicateKeyError, RecordNotFoundError
from .keys import check_key
from .keytable import SLOT_SLOW, Entry, TableInfo, decode_entries
from .layout import Layout
from .manifests import ShardLedger
from .shard_meta import ShardMeta, entry_info, entry_record

LOAD_BATCH = 64  # shards whose metadata is fetched concurrently


class NeedsSlowPath(Exception):
    """A key-table answer that cannot be used as is (internal: the caller falls back)."""


class KeyIndex:
    """Shard metadata (cached), the key table, and the key -> entry index; thread-safe.

    A shard whose metadata is corrupt is left out of the index and remembered: lookups in
    the other shards keep working, while listings and misses report it. A key table that
    fails a check is set aside (``table_problem``): reads fall back, ``verify`` reports it.
    """

    def __init__(self, ledger: ShardLedger, arrays: ShardArrays, loc: Location,
                 layout: Layout, attributes: ArchiveAttributes) -> None:
        self.url = ledger.url
        self._ledger = ledger
        self._arrays = arrays
        self._loc = loc
        self._layout = layout
        self._attributes = attributes
        self._lock = threading.RLock()
        self._metas: dict[int, ShardMeta] = {}
        self._index: dict[str, Entry] = {}
        self._by_shard: dict[int, list[Entry]] = {}
        self._dups: dict[str, list[tuple[int, int]]] = {}
        self._indexed: set[int] = set()
        self._ordered: list[str] | None = None
        self._bad: dict[int, str] = {}
        self._refreshed = False
        self._table_entries: dict[int, list[Entry]] | None = None
        self._table_seen: str | None = None  # the path whose entries are cached
        self.table_problem: str | None = None

    # -- the key table --------------------------------------------------------------------
    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def table_attr(self) -> dict[str, Any] | None:
        """The ``key_table`` attribute as stored (None: the archive has no key table)."""
        return self._attributes.doc.get("key_table")

    def read_object(self, path: str) -> bytes | None:
        """One whole object of the archive, e.g. the key table's (None: missing)."""
        return run(self._loc.get(path))

    def table(self) -> TableInfo | None:
        """The archive's key table (None: none, or it failed a check: ``table_problem``)."""
        doc = self.table_attr
        if doc is None or self.table_problem is not None:
            return None
        try:
            return TableInfo.from_attr(doc, self._layout)
        except ValueError as e:
            self._set_aside(f"key_table attribute: {e}")
            return None

    def _set_aside(self, why: str) -> None:
        self.table_problem = f"{self.url}: key table: {why}"

    def table_entries(self, info: TableInfo) -> dict[int, list[Entry]]:
        """The table's entries section, by shard (one GET, SHA-256 checked)."""
        if self._table_entries is not None and self._table_seen == info.path:
            return self._table_entries
        raw = run(self._loc.get_range(info.path, info.entries_offset, info.nbytes))
        if raw is None:
            raise NeedsSlowPath(f"{info.path} is missing")
        if len(raw) != info.entries_bytes:
            raise ValueError(f"{info.path}: entries section is {len(raw)} bytes, expected "
                             f"{info.entries_bytes}")
        if "sha256:" + hashlib.sha256(raw).hexdigest() != info.entries_sha256:
            raise ValueError(f"{info.path}: entries section fails its SHA-256")
        by: dict[int, list[Entry]] = {}
        for e in decode_entries(raw, info.keys, self._layout):
            if e.shard not in info.shards:
                raise ValueError(f"{info.path}: entry {e.key!r} is in uncovered shard {e.shard}")
            by.setdefault(e.shard, []).append(e)
        self._table_entries, self._table_seen = by, info.path
        return by

    def _table_lookup(self, key: str) -> Entry | None:
        """``key``'s entry from one ranged GET of its table slots; None when the table
        does not cover it (absent, or in a newer shard). NeedsSlowPath: use the metadata."""
        info = self.table()
        if info is None:
            raise NeedsSlowPath("no key table")
        fp, start, end = info.window_span(key)
        raw = run(self._loc.get_range(info.path, start, end))
        if raw is None:  # replaced by a newer build, or dropped by discard_shard
            raise NeedsSlowPath(f"{info.path} is missing")
        try:
            e = info.find(key, fp, raw, self._layout)
        except ValueError as err:
            self._set_aside(f"{info.path}: {err}")
            raise NeedsSlowPath(str(err)) from err
        if e is None:
            return None
        if e.status == SLOT_SLOW:
            raise NeedsSlowPath("several shards hold this key")
        if e.error is None:  # a failed record: its message is in its shard's metadata
            meta = self.meta(e.shard)
            if e.row >= len(meta.keys) or meta.keys[e.row] != key:
                raise NeedsSlowPath("the table disagrees with the shard's metadata")
            return meta.entry(e.row)
        return e

    def drop_table_cache(self) -> None:
        """Forget the cached entries section and any earlier table problem (a new build)."""
        with self._lock:
            self._table_entries, self._table_seen, self.table_problem = None, None, None

    # -- shard metadata -------------------------------------------------------------------
    async def load_meta(self, shard: int) -> ShardMeta:
        """A completed shard's metadata, read once and checked against its manifest."""
        if (m := self._metas.get(shard)) is not None:
            return m
        man = await self._ledger.fetch_manifest(shard)
        if man is None:
            raise ArchiveError(f"{self.url}: shard {shard} is not complete (no manifest entry)")
        try:
            cols = await self._arrays.read_rows(shard, man["records"])
        except OSError:
            raise
        except Exception as e:
            raise CorruptArchiveError(
                f"{self.url}: shard {shard}: cannot decode its record metadata "
                f"({type(e).__name__}: {e})"
            ) from e
        meta = ShardMeta.from_columns(shard, man, cols)
        if meta.digest() != man.get("digest"):
            raise CorruptArchiveError(
                f"{self.url}: shard {shard}: record metadata does not match its manifest digest "
                "(a chunk is missing or corrupt, or two writers wrote this shard)"
            )
        self._metas[shard] = meta
        return meta

    async def load_metas(self, shards: list[int], return_exceptions: bool = False) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(shards), LOAD_BATCH):
            out += await asyncio.gather(
                *(self.load_meta(s) for s in shards[i : i + LOAD_BATCH]),
                return_exceptions=return_exceptions,
            )
        return out

    def meta(self, shard: int) -> ShardMeta:
        return run(self.load_meta(shard))

    def iter_metas(self, shards: list[int]) -> Iterator[ShardMeta]:
        """Metadata of ``shards`` in order, fetched ``LOAD_BATCH`` shards at a time."""
        for i in range(0, len(shards), LOAD_BATCH):
            yield from run(self.load_metas(shards[i : i + LOAD_BATCH]))

    def shard_entries(self, shards: list[int]) -> Iterator[list[Entry]]:
        """Every record of ``shards`` as entries, shard by shard: from the index where it
        holds the shard (no reads), else from the shard's metadata."""
        with self._lock:
            have = {s: self._by_shard[s] for s in shards if s in self._by_shard}
        todo = [s for s in shards if s not in have]
        metas = self.iter_metas(todo)
        for s in shards:
            yield have[s] if s in have else next(metas).entries()

    def forget(self, shard: int) -> None:
        """Drop a shard's cached metadata (it was discarded, or found corrupt)."""
        with self._lock:
            self._metas.pop(shard, None)

    # -- the index ------------------------------------------------------------------------
    def _add(self, shard: int, entries: list[Entry]) -> None:
        for e in entries:
            here = (shard, e.row)
            if e.key in self._index:
                first = self._index[e.key]
                self._dups.setdefault(e.key, [(first.shard, first.row)]).append(here)
            else:
                self._index[e.key] = e
        self._by_shard[shard] = entries
        self._indexed.add(shard)

    def refresh(self) -> None:
        """Pick up shards completed (or discarded) since the index was built."""
        with self._lock:
            shards = self._ledger.completed_shards()
            if self._indexed - set(shards):  # a shard was discarded: rebuild
                self._index, self._dups, self._indexed, self._by_shard = {}, {}, set(), {}
                self._metas = {s: m for s, m in self._metas.items() if s in shards}
            todo = [s for s in shards if s not in self._indexed]
            from_table = self._from_table(todo)
            for s in todo:
                if s in from_table:
                    self._add(s, from_table[s])
            todo = [s for s in todo if s not in from_table]
            self._bad = {}
            results = run(self.load_metas(todo, return_exceptions=True))
            for s, meta in zip(todo, results):
                if isinstance(meta, CorruptArchiveError):
                    self._bad[s] = str(meta)
                    continue
                if isinstance(meta, BaseException):
                    raise meta
                self._add(meta.shard, meta.entries())
            self._ordered = None
            self._refreshed = True

    def _from_table(self, todo: list[int]) -> dict[int, list[Entry]]:
        """The table's entries of the shards in ``todo`` it covers ({} without a table)."""
        info = self.table()
        if info is None or not info.shards.intersection(todo):
            return {}
        try:
            by = self.table_entries(info)
        except NeedsSlowPath:
            return {}
        except ValueError as e:
            self._set_aside(str(e))
            return {}
        return {s: by.get(s, []) for s in todo if s in info.shards}

    def _raise_if_bad(self) -> None:
        if self._bad:
            raise CorruptArchiveError(
                f"{self.url}: {len(self._bad)} completed shard(s) cannot be read: "
                + "; ".join(self._bad.values())
            )

    def _ensure(self) -> None:
        if not self._refreshed:
            self.refresh()

    def locate(self, key: str, *, slow: bool = False) -> Entry:
        """The entry of ``key``; raises if absent or stored twice.

        Before a listing has loaded the whole index, the key table answers with one ranged
        GET (no listing); a key it does not cover goes the metadata way. ``slow``: the
        table's answer did not hold (a CRC mismatch): set the table aside and answer from
        the shards' own metadata."""
        check_key(key, self.url)
        with self._lock:
            if slow:
                if self.table_problem is None and self._attributes.doc.get("key_table"):
                    self._set_aside(f"its entry for {key!r} did not match the stored record")
                if any(e.from_table for e in self._index.values()):
                    self._index, self._dups, self._indexed, self._by_shard = {}, {}, set(), {}
                    self._refreshed = False
            elif not self._refreshed:
                try:
                    e = self._table_lookup(key)
                except NeedsSlowPath:
                    e = None
                if e is not None:
                    return e
            self._ensure()
            where = self._index.get(key)
            if where is None:
                self.refresh()
                where = self._index.get(key)
            if where is None and self._bad:
                raise CorruptArchiveError(
                    f"{self.url}: no record {key!r} in the readable shards, and some shards "
                    f"cannot be read: " + "; ".join(self._bad.values())
                )
            if where is None:
                raise RecordNotFoundError(
                    f"{self.url}: no record {key!r} in the {len(self._indexed)} completed shards"
                )
            if key in self._dups:
                raise DuplicateKeyError(
                    f"{self.url}: key {key!r} is stored more than once, in shards "
                    f"{sorted({s for s, _ in self._dups[key]})}"
                )
            return where

    def check_new_keys(self, shard: int, keys: Iterable[str]) -> None:
        """Refuse keys that a completed shard other than ``shard`` already stores."""
        self.refresh()
        with self._lock:
            for k in keys:
                where = self._index.get(k)
                if where is not None and where.shard != shard:
                    raise DuplicateKeyError(
                        f"{self.url}: shard {shard}: key {k!r} is already stored in shard "
                        f"{where.shard}"
                    )

    def all_entries(self) -> tuple[list[int], list[Entry]]:
        """(completed shards indexed, every entry in (shard, row) order, duplicates
        included): what a key table is built from."""
        with self._lock:
            self.refresh()
            self._raise_if_bad()
            shards = sorted(self._indexed)
            return shards, [e for s in shards for e in self._by_shard[s]]

    def keys(self) -> list[str]:
        """Every key in completed shards, in (shard, row) order; duplicates listed once."""
        with self._lock:
            self._ensure()
            self._raise_if_bad()
            if self._ordered is None:
                self._ordered = sorted(self._index,
                                       key=lambda k: (self._index[k].shard, self._index[k].row))
            return list(self._ordered)

    def count(self) -> int:
        """Distinct keys in completed shards."""
        with self._lock:
            self._ensure()
            self._raise_if_bad()
            return len(self._index)

    def duplicates(self) -> dict[str, list[int]]:
        """Keys stored in more than one completed shard -> the shards holding them."""
        with self._lock:
            self._ensure()
            self._raise_if_bad()
            return {k: sorted({s for s, _ in v}) for k, v in self._dups.items()}


__all__ = ["LOAD_BATCH", "KeyIndex", "NeedsSlowPath", "ShardMeta", "entry_info", "entry_record"]
