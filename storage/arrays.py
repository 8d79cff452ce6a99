"""The zarr arrays of one archive, addressed by shard.

Every array is chunked so that shard ``k`` is exactly one storage object per array (see
:mod:`storage.layout`): reading or writing a shard here never touches another shard's
objects. This is the only module that reads or writes the arrays' chunks.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import zarr

from .backend import Location
from .errors import CorruptArchiveError
from .layout import PAYLOAD, ROW_ARRAYS, Layout, payload_codecs_expected


class ShardArrays:
    """The row arrays and the payload array, checked against the layout at open."""

    def __init__(self, loc: Location, group: zarr.Group, layout: Layout) -> None:
        self._loc = loc
        self.url = loc.url
        self.layout = layout
        try:
            self.rows = {name: group[name] for name in ROW_ARRAYS}
            self.payload = group[PAYLOAD]
        except KeyError as e:
            raise CorruptArchiveError(f"{self.url}: array {e} is missing") from e
        for name, arr in self.rows.items():
            if arr.shape != (layout.rows,) or arr.chunks != (layout.shard_size,):
                raise CorruptArchiveError(f"{self.url}: array {name!r} does not match the layout")
        if self.payload.shape != (layout.max_shards, layout.max_shard_bytes):
            raise CorruptArchiveError(f"{self.url}: array {PAYLOAD!r} does not match the layout")
        codecs = json.loads(json.dumps(self.payload.metadata.to_dict()["codecs"]))
        #: Whether the payload has the exact codec chain we write, so that its bytes can be
        #: fetched by direct range reads of the shard object (else: through zarr).
        self.direct = codecs == payload_codecs_expected(layout.chunk_bytes)

    def payload_key(self, shard: int) -> str:
        """The store key of shard ``shard``'s payload object."""
        return f"{PAYLOAD}/{self.payload.metadata.encode_chunk_key((shard, 0))}"

    async def read_rows(self, shard: int, n: int) -> dict[str, Any]:
        """The first ``n`` rows of shard ``shard`` of every row array: name -> values."""
        base = self.layout.first_row(shard)
        vals = await asyncio.gather(
            *(a.async_array.getitem(slice(base, base + n)) for a in self.rows.values())
        )
        return dict(zip(self.rows, vals))

    async def read_payload(self, shard: int, start: int, n: int) -> bytes:
        """Payload bytes ``[start, start+n)`` of a shard, read through zarr."""
        arr = await self.payload.async_array.getitem((shard, slice(start, start + n)))
        return np.asarray(arr, dtype=np.uint8).tobytes()

    async def delete_shard(self, shard: int) -> None:
        """Delete shard ``shard``'s objects (its chunk of every row array and its payload):
        a removed record's bytes and key do not stay behind in the store."""
        keys = [f"{name}/{arr.metadata.encode_chunk_key((shard,))}"
                for name, arr in self.rows.items()]
        await asyncio.gather(*(self._loc.delete(k) for k in [*keys, self.payload_key(shard)]))

    async def write_shard(self, shard: int, rows: dict[str, list[Any]], payload: bytes) -> None:
        """Write one whole shard: a full chunk of every row array and the payload object.

        Rows are padded with fill values to the whole chunk (no read-modify-write); any
        payload left by a crashed attempt is deleted first, then the new one is written in
        one piece, padded to whole inner chunks so zarr does not read the (absent) shard
        back.
        """
        size, base = self.layout.shard_size, self.layout.first_row(shard)
        ops = []
        for name, (dtype, fill) in ROW_ARRAYS.items():
            values = rows[name] + [fill] * (size - len(rows[name]))
            arr = np.array(values, dtype=object if dtype == "string" else dtype)
            ops.append(self.rows[name].async_array.setitem(slice(base, base + size), arr))
        await self._loc.delete(self.payload_key(shard))
        if payload:
            c = self.layout.chunk_bytes
            buf = np.zeros(-(-len(payload) // c) * c, dtype=np.uint8)
            buf[: len(payload)] = np.frombuffer(payload, np.uint8)
            ops.append(self.payload.async_array.setitem((shard, slice(0, buf.size)), buf))
        await asyncio.gather(*ops)
