"""One completed shard's per-record metadata (:class:`ShardMeta`), and an index entry made
into what readers get (:func:`entry_info`, :func:`entry_record`).

Kept apart from :mod:`storage.index` because the payload reader and the archive facade need
these records of a shard without the index's caching and lookup machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CorruptArchiveError
from .keytable import Entry
from .records import STATUS_NAMES, Record, RecordInfo, checksum, rows_digest


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

    def entry(self, row: int, phys: int | None = None) -> Entry:
        return Entry(
            key=self.keys[row],
            shard=self.shard,
            row=row,
            offset=int(self.offset[row]),
            nbytes=int(self.nbytes[row]),
            checksum=int(self.checksum[row]),
            status=int(self.status[row]),
            height=int(self.height[row]),
            width=int(self.width[row]),
            error=self.errors[row],
            phys=phys,
        )

    def entries(self) -> list[Entry]:
        return [self.entry(r) for r in range(len(self.keys))]

    def info(self, row: int) -> RecordInfo:
        return entry_info(self.entry(row))

    def record(self, row: int, data: bytes, url: str) -> Record:
        """The record at ``row`` with its bitstream ``data``, CRC-32 checked."""
        return entry_record(self.entry(row), data, url)


def entry_info(e: Entry) -> RecordInfo:
    """What a listing says about the record of ``e`` (no payload read)."""
    return RecordInfo(
        key=e.key,
        height=e.height,
        width=e.width,
        status=STATUS_NAMES.get(e.status, "unknown"),
        error=e.error or "",
        nbytes=e.nbytes,
        checksum=e.checksum,
        shard=e.shard,
        row=e.row,
    )


def entry_record(e: Entry, data: bytes, url: str) -> Record:
    """The record of ``e`` with its bitstream ``data``, CRC-32 checked."""
    if checksum(data) != e.checksum:
        raise CorruptArchiveError(
            f"{url}: record {e.key!r} (shard {e.shard}, row {e.row}) fails its CRC-32 check"
        )
    status = STATUS_NAMES.get(e.status)
    if status is None:
        raise CorruptArchiveError(f"{url}: record {e.key!r} has an unknown status code")
    return Record(key=e.key, data=data, height=e.height, width=e.width, status=status,
                  error=e.error or "")
