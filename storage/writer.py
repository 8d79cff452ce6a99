"""Writing one whole shard: claim, buffer, commit.

Protocol (why each step exists):

1. **Claim** ``claims/<k>.json`` with an exclusive create. Deterministic partitioning
   already gives each shard to one task; the claim turns a partitioning bug or a stray
   second job into a clear :class:`ShardTakenError` instead of silent data loss. A claim
   left by a crashed writer is *not* a lock forever: ``takeover=True`` replaces it.
2. **Buffer** records in memory. zarr writes a shard in one piece (anything else is a
   read-modify-write), and buffering means a writer that dies mid-shard leaves no data.
3. **Commit**: re-check the claim is still ours, write every array's chunk for the shard,
   and the shard's record metadata (``meta/<k>.json``, where any record has some), re-check
   the claim, then create ``manifest/<k>.json`` (exclusive) carrying the record count and
   digests. Readers only see shards with a manifest entry, so a crash at any
   point leaves the shard invisible and re-writable. Finally drop the claim.

Writing a shard that is already complete changes nothing: the new records are compared
with the manifest (by key list, or exactly) and either accepted as a no-op or refused with
:class:`ShardCompleteError`.
"""

from __future__ import annotations

import operator
import os
import socket
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .backend import run
from .errors import (
    DuplicateKeyError,
    ReadOnlyArchiveError,
    ShardCompleteError,
    ShardFullError,
    ShardTakenError,
)
from .keys import check_key
from .layout import FORMAT_VERSION, ROW_ARRAYS
from .parts import ArchiveParts
from .record_meta import encode_shard_meta, meta_digest
from .records import STATUS_CODES, Record, checksum, keys_digest, rows_digest

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

IfComplete = Literal["keys", "exact", "error"]


class WriterTarget(Protocol):
    """What a :class:`ShardWriter` needs of an archive (:class:`storage.Archive` has it)."""

    @property
    def url(self) -> str: ...

    @property
    def read_only(self) -> bool: ...

    @property
    def parts(self) -> ArchiveParts: ...


def default_owner() -> str:
    """host:pid:random - unique per writer, readable in a ShardTakenError message."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ShardWriter:
    """Writes the records of one shard; use as a context manager.

    ``with archive.writer(k) as w: w.write(Record(...))`` commits on a clean exit and
    releases the claim (writing nothing) when the block raises.
    """

    def __init__(
        self,
        archive: WriterTarget,
        shard: int,
        *,
        owner: str | None = None,
        takeover: bool = False,
        if_complete: IfComplete = "keys",
        check_duplicates: bool = False,
        replaces: int | None = None,
    ) -> None:
        if isinstance(shard, bool):
            raise TypeError("shard must be an int, got bool")
        shard = operator.index(shard)  # accepts numpy integers from partitioning code
        parts = archive.parts
        max_shards = parts.layout.max_shards
        if not 0 <= shard < max_shards:
            raise ShardFullError(
                f"{archive.url}: shard {shard} is outside 0..{max_shards - 1} "
                f"(max_shards={max_shards})"
            )
        if if_complete not in ("keys", "exact", "error"):
            raise ValueError(f"if_complete must be 'keys', 'exact' or 'error', got {if_complete!r}")
        if archive.read_only:
            raise ReadOnlyArchiveError(
                f"{archive.url}: opened read-only; cannot write shard {shard}"
            )
        self.archive = archive
        self._layout = parts.layout
        self._ledger = parts.ledger
        self._parts = parts
        self.shard = shard
        self.owner = owner or default_owner()
        self.takeover = takeover
        self.if_complete = if_complete
        self.check_duplicates = check_duplicates
        # The shard this one's records were copied from by a removal (storage.removal):
        # recorded in the manifest so that an interrupted removal can be finished.
        self.replaces = replaces
        self._token = uuid.uuid4().hex
        self._records: list[Record] = []
        self._keys: set[str] = set()
        self._nbytes = 0
        self._state = "new"  # new -> open | verify -> committed | aborted
        self.already_complete = False
        self.unchanged = False
        self.took_over: dict[str, Any] | None = None
        self.manifest: dict[str, Any] | None = None

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    @property
    def where(self) -> str:
        return f"{self.archive.url}: shard {self.shard}"

    def __len__(self) -> int:
        return len(self._records)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    # -- claim ----------------------------------------------------------------------------
    def open(self) -> Self:
        """Claim the shard (or note that it is already complete)."""
        if self._state != "new":
            return self
        if self._ledger.is_complete(self.shard):
            self.already_complete = True
            self._state = "verify"
            return self
        claim = {
            "shard": self.shard,
            "owner": self.owner,
            "token": self._token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "claimed_at": _now(),
        }
        for _ in range(3):  # a claim released between our create and read: try again
            if self._ledger.create_claim(self.shard, claim):
                break
            current = self._ledger.claim(self.shard)
            if current is None:
                continue
            if not self.takeover:
                raise ShardTakenError(
                    f"{self.where} is claimed by {current.get('owner')!r} "
                    f"(host {current.get('host')}, pid {current.get('pid')}, since "
                    f"{current.get('claimed_at')}). If that writer is dead (e.g. a crashed "
                    f"job), re-run with writer({self.shard}, takeover=True)."
                )
            self.took_over = current
            claim["took_over_from"] = current.get("owner")
            self._ledger.replace_claim(self.shard, claim)
            break
        else:
            raise ShardTakenError(f"{self.where}: could not claim the shard (claims keep changing)")
        self._check_claim("while claiming it")
        self._state = "open"
        if self._ledger.is_complete(self.shard):  # completed while we claimed
            self._release()
            self.already_complete = True
            self._state = "verify"
        return self

    def _check_claim(self, when: str) -> None:
        current = self._ledger.claim(self.shard)
        if current is None or current.get("token") != self._token:
            owner = None if current is None else current.get("owner")
            raise ShardTakenError(
                f"{self.where}: this writer ({self.owner!r}) lost its claim {when}; it is now "
                f"held by {owner!r}. Nothing was committed by this writer."
            )

    def _release(self) -> None:
        current = self._ledger.claim(self.shard)
        if current is not None and current.get("token") == self._token:
            self._ledger.drop_claim(self.shard)

    # -- records --------------------------------------------------------------------------
    def write(self, record: Record) -> None:
        """Buffer one record; validation errors are raised here, before anything is stored."""
        if self._state == "new":
            self.open()
        if self._state not in ("open", "verify"):
            raise ShardTakenError(f"{self.where}: writer is {self._state}; open a new one")
        if not isinstance(record, Record):
            raise TypeError(f"write() takes a storage.Record, got {type(record).__name__}")
        check_key(record.key, self.where)
        if record.key in self._keys:
            raise DuplicateKeyError(f"{self.where}: key {record.key!r} written twice")
        if len(self._records) >= self._layout.shard_size:
            raise ShardFullError(
                f"{self.where}: already holds shard_size={self._layout.shard_size} records; "
                f"cannot add {record.key!r}"
            )
        if self._nbytes + len(record.data) > self._layout.max_shard_bytes:
            raise ShardFullError(
                f"{self.where}: adding {record.key!r} ({len(record.data)} bytes) would exceed "
                f"max_shard_bytes={self._layout.max_shard_bytes}; create the archive with a "
                "larger max_shard_bytes or a smaller shard_size"
            )
        self._records.append(record)
        self._keys.add(record.key)
        self._nbytes += len(record.data)

    def write_failed(self, key: str, error: str, *, height: int = 0, width: int = 0) -> None:
        """Record an image the codec could not compress, so listings and summaries show it."""
        self.write(Record.failed(key, error, height=height, width=width))

    def write_all(self, records: Iterable[Record]) -> None:
        for r in records:
            self.write(r)

    # -- commit ---------------------------------------------------------------------------
    def _rows(self) -> dict[str, list[Any]]:
        offsets, pos = [], 0
        for r in self._records:
            offsets.append(pos)
            pos += len(r.data)
        return {
            "key": [r.key for r in self._records],
            "status": [STATUS_CODES[r.status] for r in self._records],
            "height": [r.height for r in self._records],
            "width": [r.width for r in self._records],
            "checksum": [checksum(r.data) for r in self._records],
            "offset": offsets,
            "nbytes": [len(r.data) for r in self._records],
            "error": [r.error for r in self._records],
        }

    def _meta_blob(self) -> bytes | None:
        return encode_shard_meta(self.shard, [r.key for r in self._records],
                                 [r.meta for r in self._records])

    def _entry(self, rows: dict[str, list[Any]], meta: bytes | None) -> dict[str, Any]:
        n_failed = sum(1 for r in self._records if r.status != "ok")
        extra: dict[str, Any] = {"meta_digest": meta_digest(meta)} if meta else {}
        if self.replaces is not None:
            extra["replaces"] = self.replaces
        return {
            "format_version": FORMAT_VERSION,
            "shard": self.shard,
            "records": len(self._records),
            "ok": len(self._records) - n_failed,
            "failed": n_failed,
            "bytes": self._nbytes,
            "digest": rows_digest(*(rows[n] for n in ROW_ARRAYS)),
            "keys_digest": keys_digest(rows["key"]),
            "first_key": rows["key"][0] if rows["key"] else None,
            "last_key": rows["key"][-1] if rows["key"] else None,
            "owner": self.owner,
            "committed_at": _now(),
            **extra,
        }

    def _compare(self, stored: dict[str, Any], mine: dict[str, Any]) -> None:
        """Idempotent re-write: accept identical content as a no-op, refuse anything else."""
        if self.if_complete == "error":
            raise ShardCompleteError(f"{self.where} is already complete; it was not re-written")
        field = "keys_digest" if self.if_complete == "keys" else "digest"
        same_meta = (self.if_complete == "keys"
                     or stored.get("meta_digest") == mine.get("meta_digest"))
        if stored.get(field) != mine[field] or not same_meta:
            what = "keys" if field == "keys_digest" else "content"
            raise ShardCompleteError(
                f"{self.where} is already complete with different {what} "
                f"(stored: {stored.get('records')} records, {stored.get('first_key')!r}.."
                f"{stored.get('last_key')!r}; this writer: {mine['records']} records, "
                f"{mine['first_key']!r}..{mine['last_key']!r}). The stored shard was kept; "
                "did the input partitioning change between runs?"
            )
        self.unchanged = True
        self.manifest = stored

    def commit(self) -> dict[str, Any]:
        """Write the shard and its manifest entry; return the manifest entry."""
        if self._state == "new":
            self.open()
        if self._state == "committed":
            assert self.manifest is not None
            return self.manifest
        if self._state not in ("open", "verify"):
            raise ShardTakenError(f"{self.where}: writer is {self._state}; cannot commit")
        rows = self._rows()
        meta = self._meta_blob()
        entry = self._entry(rows, meta)
        try:
            if self._state == "verify":
                self._compare(self._ledger.require_manifest(self.shard), entry)
                self._state = "committed"
                return entry if self.manifest is None else self.manifest
            if self.check_duplicates:
                self._parts.index.check_new_keys(self.shard, rows["key"])
            self._check_claim("before writing")
            payload = b"".join(r.data for r in self._records)
            run(self._parts.arrays.write_shard(self.shard, rows, payload))
            self._parts.meta.write(self.shard, meta)
            self._check_claim("while writing")
            if self._ledger.create_manifest(self.shard, entry):
                self.manifest = entry
            else:  # someone else completed it (after a takeover): same rule as a re-run
                self._compare(self._ledger.require_manifest(self.shard), entry)
            self._release()
            self._state = "committed"
            self._parts.payload.forget(self.shard)  # its cached shard index is stale
            return self.manifest or entry
        except BaseException:
            if self._state == "open":
                self.abort()
            raise

    def abort(self) -> None:
        """Drop the buffered records and release the claim; nothing is written."""
        if self._state == "open":
            try:
                self._release()
            finally:
                self._state = "aborted"
        elif self._state in ("new", "verify"):
            self._state = "aborted"
        self._records.clear()
        self._keys.clear()
        self._nbytes = 0
