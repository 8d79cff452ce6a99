"""Payload reads: a record's bytes by ranged reads of its shard's payload object.

A shard's payload is one zarr shard (``sharding_indexed``, index at the end). Reading
bytes ``[start, start+n)`` needs that index once per shard (16 bytes per inner chunk,
kept in a small LRU) and then one ranged GET per contiguous run of stored inner chunks,
so neither lookups nor reads touch other records' payloads. Payloads this code did not
write (another codec chain) are read through zarr instead.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np

from .arrays import ShardArrays
from .backend import Location, run
from .errors import CorruptArchiveError
from .keytable import Entry
from .layout import Layout, index_nbytes, inner_chunk_missing, parse_shard_index
from .records import Record
from .shard_meta import ShardMeta

INDEX_CACHE = 256  # shard indexes kept in memory (16 B per inner chunk each)


class PayloadReader:
    """Byte-range reads of shard payloads; ``direct=False`` forces reads through zarr."""

    def __init__(self, loc: Location, layout: Layout, arrays: ShardArrays) -> None:
        self._loc = loc
        self.url = loc.url
        self._layout = layout
        self._arrays = arrays
        self.direct = arrays.direct
        self._shard_indexes: OrderedDict[int, np.ndarray] = OrderedDict()

    def forget(self, shard: int) -> None:
        """Drop a shard's cached shard index (its payload object was re-written or dropped)."""
        self._shard_indexes.pop(shard, None)

    async def _shard_index(self, shard: int) -> np.ndarray:
        idx = self._shard_indexes.get(shard)
        if idx is not None:
            self._shard_indexes.move_to_end(shard)
            return idx
        key = self._arrays.payload_key(shard)
        n_inner = self._layout.n_inner
        raw = await self._loc.get_suffix(key, index_nbytes(n_inner))
        if raw is None:
            raise CorruptArchiveError(
                f"{self.url}: shard {shard}: payload object {key!r} is missing"
            )
        try:
            idx = parse_shard_index(raw, n_inner)
        except ValueError as e:
            raise CorruptArchiveError(
                f"{self.url}: shard {shard}: payload object {key!r}: {e}"
            ) from e
        self._shard_indexes[shard] = idx
        while len(self._shard_indexes) > INDEX_CACHE:
            self._shard_indexes.popitem(last=False)
        return idx

    async def read(self, shard: int, start: int, n: int) -> bytes:
        """Bytes ``[start, start+n)`` of a shard's payload, by ranged reads of its object."""
        if n <= 0:
            return b""
        if not self.direct:
            try:
                return await self._arrays.read_payload(shard, start, n)
            except OSError:
                raise
            except Exception as e:
                raise CorruptArchiveError(
                    f"{self.url}: shard {shard}: cannot read payload ({e})"
                ) from e
        idx = await self._shard_index(shard)
        c, end = self._layout.chunk_bytes, start + n
        segs: list[list[int]] = []  # [kind(0=zeros,1=range), a, b]
        for j in range(start // c, (end - 1) // c + 1):
            lo, hi = max(start, j * c) - j * c, min(end, (j + 1) * c) - j * c
            entry = idx[j]
            if inner_chunk_missing(entry):  # all-zero inner chunks are not stored
                segs.append([0, 0, hi - lo])
                continue
            if int(entry[1]) != c:
                raise CorruptArchiveError(
                    f"{self.url}: shard {shard}: inner chunk {j} has a bad size"
                )
            a, b = int(entry[0]) + lo, int(entry[0]) + hi
            if segs and segs[-1][0] == 1 and segs[-1][2] == a:
                segs[-1][2] = b
            else:
                segs.append([1, a, b])
        key = self._arrays.payload_key(shard)
        parts = await asyncio.gather(
            *(self._loc.get_range(key, a, b) for kind, a, b in segs if kind == 1)
        )
        out, it = [], iter(parts)
        for kind, a, b in segs:
            if kind == 0:
                out.append(bytes(b - a))
                continue
            part = next(it)
            if part is None or len(part) != b - a:
                raise CorruptArchiveError(
                    f"{self.url}: shard {shard}: payload object {key!r} is truncated or missing"
                )
            out.append(part)
        return b"".join(out)

    async def read_entry(self, e: Entry, limit: int | None = None) -> bytes:
        """A record's bitstream (its first ``limit`` bytes when given). An entry that knows
        where its bytes lie in the payload object (``phys``, from the key table) is one
        ranged GET, without the shard index."""
        n = e.nbytes if limit is None else min(limit, e.nbytes)
        if e.phys is not None and self.direct:
            if n <= 0:
                return b""
            key = self._arrays.payload_key(e.shard)
            data = await self._loc.get_range(key, e.phys, e.phys + n)
            if data is None or len(data) != n:
                raise CorruptArchiveError(
                    f"{self.url}: shard {e.shard}: payload object {key!r} is truncated or missing"
                )
            return data
        if e.offset < 0:
            raise CorruptArchiveError(f"{self.url}: record {e.key!r}: no payload offset known")
        return await self.read(e.shard, e.offset, n)

    def read_row(self, e: Entry, limit: int | None = None) -> bytes:
        """A record's bitstream (its first ``limit`` bytes when given)."""
        return run(self.read_entry(e, limit))

    def read_rows(self, where: Sequence[Entry], *, concurrency: int) -> list[bytes]:
        """Several records' bitstreams, at most ``concurrency`` reads in flight."""

        async def fetch() -> list[bytes]:
            sem = asyncio.Semaphore(max(1, concurrency))

            async def one(e: Entry) -> bytes:
                async with sem:
                    return await self.read_entry(e)

            return await asyncio.gather(*(one(e) for e in where))

        return run(fetch())

    async def physical_offsets(self, shard: int, entries: Sequence[Entry]) -> list[int | None]:
        """Where each record's bytes start in the shard's payload *object*, when they are
        one contiguous run there (None otherwise): what the key table stores so that a
        read needs no shard index. One read of the shard index."""
        if not self.direct or not entries:
            return [None] * len(entries)
        idx = await self._shard_index(shard)
        c = self._layout.chunk_bytes
        out: list[int | None] = []
        for e in entries:
            if e.nbytes == 0 or e.offset < 0:
                out.append(None)
                continue
            first, last = e.offset // c, (e.offset + e.nbytes - 1) // c
            base = idx[first]
            if inner_chunk_missing(base) or int(base[1]) != c:
                out.append(None)
                continue
            start = int(base[0])
            ok = all(
                not inner_chunk_missing(idx[j]) and int(idx[j][1]) == c
                and int(idx[j][0]) == start + (j - first) * c
                for j in range(first + 1, last + 1)
            )
            out.append(start + e.offset - first * c if ok else None)
        return out

    def shard_records(self, meta: ShardMeta) -> Iterator[Record]:
        """Every record of one shard, from one read of the shard's whole payload."""
        blob = run(self.read(meta.shard, 0, meta.payload_end()))
        for row in range(len(meta.keys)):
            o, n = meta.span(row)
            yield meta.record(row, blob[o : o + n], self.url)
