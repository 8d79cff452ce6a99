"""The parts an :class:`storage.Archive` is made of, wired together at open.

``Archive`` is a facade over these; :class:`storage.writer.ShardWriter` and
:mod:`storage.verify` use them directly, through their public methods, rather than the
facade's internals. Every part shares the archive's one :class:`~storage.backend.Location`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zarr

from .arrays import ShardArrays
from .attributes import ArchiveAttributes
from .backend import Location
from .decoded_cache import DecodedCache
from .index import KeyIndex
from .layout import Layout
from .manifests import ShardLedger
from .payload import PayloadReader
from .record_meta import RecordMeta


@dataclass(frozen=True)
class ArchiveParts:
    """One archive's geometry, attributes, shard ledger, arrays, index, reads, cache and
    record metadata."""

    layout: Layout
    attributes: ArchiveAttributes
    ledger: ShardLedger
    arrays: ShardArrays
    index: KeyIndex
    payload: PayloadReader
    cache: DecodedCache
    meta: RecordMeta

    @classmethod
    def build(cls, loc: Location, group: zarr.Group, attrs: dict[str, Any]) -> ArchiveParts:
        """Check the layout and arrays against the attributes (CorruptArchiveError if
        they disagree) and wire the parts."""
        layout = Layout.from_attrs(attrs, loc.url)
        attributes = ArchiveAttributes.checked(loc.url, attrs)
        arrays = ShardArrays(loc, group, layout)
        ledger = ShardLedger(loc, layout.shard_size)
        return cls(
            layout=layout,
            attributes=attributes,
            ledger=ledger,
            arrays=arrays,
            index=KeyIndex(ledger, arrays, loc, layout, attributes),
            payload=PayloadReader(loc, layout, arrays),
            cache=DecodedCache(loc, attributes),
            meta=RecordMeta(loc, layout.shard_size),
        )

    def forget_shard(self, shard: int) -> None:
        """Drop everything cached about a shard (it was discarded)."""
        self.index.forget(shard)
        self.payload.forget(shard)
        self.meta.forget(shard)
