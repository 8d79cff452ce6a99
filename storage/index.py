"""The key index: key -> (shard, row), built from completed shards' small metadata.

Each completed shard's row arrays (key, status, sizes, checksum, offset, nbytes, error:
about 100 bytes per record) are read once, checked against the manifest digest and kept
as a :class:`ShardMeta`; the index over them answers lookups without touching payloads.
A missing key triggers one re-list, so a long-lived reader sees new shards.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import ShardArrays
from .backend import run
from .errors import ArchiveError, CorruptArchiveError, DuplicateKeyError, RecordNotFoundError
from .keys import check_key
from .manifests import ShardLedger
from .records import STATUS_NAMES, Record, RecordInfo, checksum, rows_digest

LOAD_BATCH = 64  # shards whose metadata is fetched concurrently


@dataclass
class ShardMeta:
    """The (small) per-record metadata of one completed shard."""

    shard: int
    manifest: dict[str, Any]
    keys: list[str]
    status: np.ndarray
    height: np.ndarray
    width: np.ndarray
    checksum: np.ndarray
    offset: np.ndarray
    nbytes: np.ndarray
    errors: list[str]

    @classmethod
    def from_columns(cls, shard: int, manifest: dict[str, Any], cols: dict[str, Any]) -> ShardMeta:
        return cls(
            shard=shard,
            manifest=manifest,
            keys=[str(k) for k in cols["key"]],
            status=np.asarray(cols["status"]),
            height=np.asarray(cols["height"]),
            width=np.asarray(cols["width"]),
            checksum=np.asarray(cols["checksum"]),
            offset=np.asarray(cols["offset"]),
            nbytes=np.asarray(cols["nbytes"]),
            errors=[str(e) for e in cols["error"]],
        )

    def digest(self) -> str:
        """What the manifest's ``digest`` must be for these rows."""
        return rows_digest(
            self.keys,
            self.status,
            self.height,
            self.width,
            self.checksum,
            self.offset,
            self.nbytes,
            self.errors,
        )

    def span(self, row: int) -> tuple[int, int]:
        """``(offset, nbytes)`` of a record's bitstream in the shard's payload."""
        return int(self.offset[row]), int(self.nbytes[row])

    def payload_end(self) -> int:
        """Bytes of the shard's payload in use (records are stored back to back)."""
        return int(self.offset[-1] + self.nbytes[-1]) if self.keys else 0

    def info(self, row: int) -> RecordInfo:
        return RecordInfo(
            key=self.keys[row],
            height=int(self.height[row]),
            width=int(self.width[row]),
            status=STATUS_NAMES.get(int(self.status[row]), "unknown"),
            error=self.errors[row],
            nbytes=int(self.nbytes[row]),
            checksum=int(self.checksum[row]),
            shard=self.shard,
            row=row,
        )

    def record(self, row: int, data: bytes, url: str) -> Record:
        """The record at ``row`` with its bitstream ``data``, CRC-32 checked."""
        key = self.keys[row]
        if checksum(data) != int(self.checksum[row]):
            raise CorruptArchiveError(
                f"{url}: record {key!r} (shard {self.shard}, row {row}) fails its CRC-32 check"
            )
        status = STATUS_NAMES.get(int(self.status[row]))
        if status is None:
            raise CorruptArchiveError(f"{url}: record {key!r} has an unknown status code")
        return Record(
            key=key,
            data=data,
            height=int(self.height[row]),
            width=int(self.width[row]),
            status=status,
            error=self.errors[row],
        )


class KeyIndex:
    """Shard metadata (cached) and the key -> (shard, row) index over it; thread-safe.

    A shard whose metadata is corrupt is left out of the index and remembered: lookups in
    the other shards keep working, while listings and misses report it.
    """

    def __init__(self, ledger: ShardLedger, arrays: ShardArrays) -> None:
        self.url = ledger.url
        self._ledger = ledger
        self._arrays = arrays
        self._lock = threading.RLock()
        self._metas: dict[int, ShardMeta] = {}
        self._index: dict[str, tuple[int, int]] = {}
        self._dups: dict[str, list[tuple[int, int]]] = {}
        self._indexed: set[int] = set()
        self._ordered: list[str] | None = None
        self._bad: dict[int, str] = {}
        self._refreshed = False

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

    def forget(self, shard: int) -> None:
        """Drop a shard's cached metadata (it was discarded, or found corrupt)."""
        with self._lock:
            self._metas.pop(shard, None)

    # -- the index ------------------------------------------------------------------------
    def refresh(self) -> None:
        """Pick up shards completed (or discarded) since the index was built."""
        with self._lock:
            shards = self._ledger.completed_shards()
            if self._indexed - set(shards):  # a shard was discarded: rebuild
                self._index, self._dups, self._indexed = {}, {}, set()
                self._metas = {s: m for s, m in self._metas.items() if s in shards}
            todo = [s for s in shards if s not in self._indexed]
            self._bad = {}
            results = run(self.load_metas(todo, return_exceptions=True))
            for s, meta in zip(todo, results):
                if isinstance(meta, CorruptArchiveError):
                    self._bad[s] = str(meta)
                    continue
                if isinstance(meta, BaseException):
                    raise meta
                for row, key in enumerate(meta.keys):
                    here = (meta.shard, row)
                    if key in self._index:
                        self._dups.setdefault(key, [self._index[key]]).append(here)
                    else:
                        self._index[key] = here
                self._indexed.add(meta.shard)
            self._ordered = None
            self._refreshed = True

    def _raise_if_bad(self) -> None:
        if self._bad:
            raise CorruptArchiveError(
                f"{self.url}: {len(self._bad)} completed shard(s) cannot be read: "
                + "; ".join(self._bad.values())
            )

    def _ensure(self) -> None:
        if not self._refreshed:
            self.refresh()

    def locate(self, key: str) -> tuple[ShardMeta, int]:
        """``(metadata of its shard, row)`` of ``key``; raises if absent or stored twice."""
        check_key(key, self.url)
        with self._lock:
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
            return self._metas[where[0]], where[1]

    def check_new_keys(self, shard: int, keys: Iterable[str]) -> None:
        """Refuse keys that a completed shard other than ``shard`` already stores."""
        self.refresh()
        with self._lock:
            for k in keys:
                where = self._index.get(k)
                if where is not None and where[0] != shard:
                    raise DuplicateKeyError(
                        f"{self.url}: shard {shard}: key {k!r} is already stored in shard "
                        f"{where[0]}"
                    )

    def keys(self) -> list[str]:
        """Every key in completed shards, in (shard, row) order; duplicates listed once."""
        with self._lock:
            self._ensure()
            self._raise_if_bad()
            if self._ordered is None:
                self._ordered = sorted(self._index, key=self._index.__getitem__)
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
