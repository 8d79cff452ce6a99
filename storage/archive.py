"""``Archive``: one compressed collection, addressed by URL.

Readers see only *completed* shards (those with a manifest entry). Lookups go
key -> (shard, row, offset, ...) through the key table (:mod:`storage.keytable`: one ranged
GET, built by :meth:`Archive.build_index`) where it covers the key, else through an
in-memory index built from each shard's small row chunks; a record's payload is then
fetched with byte-range reads of that one shard object, so neither lookups nor reads touch
other records' payloads.

``Archive`` is a facade: the work is done by the parts in :class:`storage.parts.ArchiveParts`
(group creation and sniffing in :mod:`storage.group`, attributes in
:mod:`storage.attributes`, manifests and claims in :mod:`storage.manifests`, the key index
in :mod:`storage.index`, the key table's build in :mod:`storage.table_build`, payload reads
in :mod:`storage.payload`, the decoded-image cache in :mod:`storage.decoded_cache`,
verification in :mod:`storage.verify`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import zarr

from .backend import Location, run
from .errors import (
    ArchiveError,
    CorruptArchiveError,
    DuplicateKeyError,
    ReadOnlyArchiveError,
    RecordNotFoundError,
)
from .group import consolidate, create_group, open_group, update_attrs
from .layout import CLAIMS_DIR, DEFAULT_CHUNK_BYTES, DEFAULT_MAX_SHARDS, DEFAULT_SHARD_SIZE
from .parts import ArchiveParts
from .records import Record, RecordInfo
from .removal import finish_removals, pending_removals, remove_keys
from .shard_meta import entry_info, entry_record
from .table_build import build_key_table, drop_key_table
from .verify import verify_parts
from .writer import IfComplete, ShardWriter


class Archive:
    """A chunked bitstream archive (zarr v3 group) at a local path or fsspec URL.

    Create with :meth:`create`, open with :meth:`open`. Writers get whole shards via
    :meth:`writer`; readers use ``archive[key]``, :meth:`read_prefix`, :meth:`keys`,
    :meth:`records`. Safe to pickle (it re-opens by URL), e.g. into Ray tasks.
    """

    # -- construction ---------------------------------------------------------------------
    def __init__(self, loc: Location, group: zarr.Group, attrs: dict[str, Any]) -> None:
        self._loc = loc
        self._group = group
        self._parts = ArchiveParts.build(loc, group, attrs)
        self._attributes = self._parts.attributes
        layout = self._parts.layout
        self.shard_size = layout.shard_size
        self.max_shards = layout.max_shards
        self.chunk_bytes = layout.chunk_bytes
        self.max_shard_bytes = layout.max_shard_bytes

    @classmethod
    def create(
        cls,
        url: str,
        *,
        codec_id: str,
        model_id: str,
        weights_digest: str,
        codec_config: Mapping[str, Any] | None = None,
        tiers: Mapping[str, Mapping[str, Any]] | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
        max_shards: int = DEFAULT_MAX_SHARDS,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_shard_bytes: int | None = None,
        info: Mapping[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> Archive:
        """Create an empty archive at ``url``; refuses if anything is stored there already.

        ``shard_size`` records per shard; ``max_shard_bytes`` caps one shard's payload
        (default ``shard_size`` x 128 KiB); ``chunk_bytes`` is the payload's inner chunk.
        """
        create_group(
            url,
            codec_id=codec_id,
            model_id=model_id,
            weights_digest=weights_digest,
            codec_config=codec_config,
            tiers=tiers,
            shard_size=shard_size,
            max_shards=max_shards,
            chunk_bytes=chunk_bytes,
            max_shard_bytes=max_shard_bytes,
            info=info,
            storage_options=storage_options,
        )
        return cls.open(url, storage_options=storage_options)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        expected_digest: str | None = None,
        read_only: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> Archive:
        """Open an existing archive; with ``expected_digest``, also :meth:`check_model`."""
        arch = cls(*open_group(url, storage_options, read_only))
        if expected_digest is not None:
            arch.check_model(expected_digest)
        return arch

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.url, self._loc.storage_options, self.read_only))

    def __repr__(self) -> str:
        return f"Archive({self.url!r}, codec={self.codec_id!r}, model={self.model_id!r})"

    @property
    def parts(self) -> ArchiveParts:
        """The parts this facade delegates to (for :class:`ShardWriter` and storage tools;
        jobs use the methods here)."""
        return self._parts

    @property
    def _direct(self) -> bool:
        """Whether payloads are read by direct range reads (False: through zarr; a test
        switches it off to exercise that path)."""
        return self._parts.payload.direct

    @_direct.setter
    def _direct(self, value: bool) -> None:
        self._parts.payload.direct = value

    # -- attributes -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._loc.url

    @property
    def read_only(self) -> bool:
        return self._loc.read_only

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the archive's ``cdc_archive`` attributes."""
        return self._attributes.copy()

    @property
    def format_version(self) -> int:
        return self._attributes.format_version

    @property
    def codec_id(self) -> str:
        return self._attributes.codec_id

    @property
    def codec_config(self) -> dict[str, Any]:
        return self._attributes.codec_config

    @property
    def model_id(self) -> str:
        return self._attributes.model_id

    @property
    def weights_digest(self) -> str:
        return self._attributes.weights_digest

    @property
    def tiers(self) -> dict[str, dict[str, Any]]:
        return self._attributes.tiers

    @property
    def created(self) -> dict[str, Any]:
        return self._attributes.created

    def check_model(self, digest: str) -> None:
        """Raise :class:`ModelMismatchError` unless ``digest`` is the archive's weights digest.

        Comparison ignores case and an ``algo:`` prefix present on one side only.
        """
        self._attributes.check_model(digest)

    def set_tiers(self, tiers: Mapping[str, Mapping[str, Any]], *, replace: bool = False) -> None:
        """Add/update quality tiers (or replace them all) and re-consolidate metadata.

        Meant for the job driver only: two concurrent ``set_tiers`` calls race (last wins).
        """
        self._writable("set tiers")
        attrs = self._attributes.with_tiers(tiers, replace=replace)
        stored = update_attrs(self._loc, lambda d: {**d, "tiers": attrs["tiers"]})
        self._attributes.doc = {**stored, "tiers": attrs["tiers"]}

    def consolidate(self) -> None:
        """Rewrite the consolidated metadata (one GET opens the archive).

        Adding shards never changes array metadata (shapes are fixed at create), so the
        consolidated view stays valid as shards are written; only attribute changes
        (:meth:`set_tiers`) need this, and they call it.
        """
        self._writable("consolidate metadata")
        consolidate(self._loc)

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyArchiveError(f"{self.url}: opened read-only; cannot {what}")

    def check_writable(self) -> None:
        """Raise :class:`StoreAccessError` (``reason="denied"`` for a read-only bucket) if
        this archive cannot be written, before a job starts: one probe object,
        ``claims/write-probe-<random>`` (ignored by readers), created then deleted."""
        self._writable("write shards")
        probe = f"{CLAIMS_DIR}/write-probe-{uuid.uuid4().hex}"
        try:
            run(self._loc.create(probe, b"probe"))
            run(self._loc.delete(probe))
        except Exception as e:  # noqa: BLE001  (any store failure becomes one line)
            raise self._loc.access_error(e, "write to the archive", writing=True) from e

    # -- shards ---------------------------------------------------------------------------
    def writer(
        self,
        shard: int,
        *,
        owner: str | None = None,
        takeover: bool = False,
        if_complete: IfComplete = "keys",
        check_duplicates: bool = False,
        replaces: int | None = None,
    ) -> ShardWriter:
        """A writer for shard ``shard`` (use as a context manager).

        ``owner``: recorded in the claim and the manifest (e.g. a job id); ``takeover``:
        replace a claim left by a dead writer; ``if_complete``: what re-writing a completed
        shard does ("keys": no-op if the key list matches, else ShardCompleteError;
        "exact": same but compares all fields and checksums; "error": always refuse);
        ``check_duplicates``: refuse keys already stored in other shards (reads every
        completed shard's key chunk, so off by default); ``replaces``: the shard whose
        records a removal copies into this one (:meth:`remove`).
        """
        return ShardWriter(
            self,
            shard,
            owner=owner,
            takeover=takeover,
            if_complete=if_complete,
            check_duplicates=check_duplicates,
            replaces=replaces,
        )

    def write_shard(self, shard: int, records: Iterable[Record], **kwargs: Any) -> dict[str, Any]:
        """Write a whole shard from an iterable; returns its manifest entry."""
        with self.writer(shard, **kwargs) as w:
            w.write_all(records)
        assert w.manifest is not None
        return w.manifest

    def completed_shards(self) -> list[int]:
        """Shards with a manifest entry (one listing request), ascending."""
        return self._parts.ledger.completed_shards()

    def is_complete(self, shard: int) -> bool:
        return self._parts.ledger.is_complete(shard)

    def manifest(self, shard: int) -> dict[str, Any] | None:
        """The manifest entry of a completed shard, or None."""
        return self._parts.ledger.manifest(shard)

    def claim(self, shard: int) -> dict[str, Any] | None:
        """The current claim on a shard (owner, host, pid, time), or None."""
        return self._parts.ledger.claim(shard)

    def claims(self) -> dict[int, dict[str, Any]]:
        """All open claims: shards being written now, or left behind by crashed writers."""
        return self._parts.ledger.claims()

    def release(self, shard: int) -> None:
        """Delete a shard's claim (an operator action; ``takeover=True`` is usually simpler)."""
        self._writable("release a claim")
        self._parts.ledger.drop_claim(shard)

    def discard_shard(self, shard: int) -> None:
        """Forget a completed shard (delete its manifest entry and claim) so it can be
        re-written: the repair path for a shard that ``verify`` reports as corrupt."""
        self._writable("discard a shard")
        self.drop_index()  # its entries for this shard would be stale
        self._parts.ledger.discard(shard)
        self._parts.meta.delete(shard)
        self._parts.forget_shard(shard)

    def remove(self, keys: Iterable[str], *, owner: str | None = None) -> dict[str, Any]:
        """Remove records for good (:mod:`storage.removal`): each shard holding one is
        replaced by a copy without it, then deleted; the key table is rebuilt and the
        decoded images cached for those keys are deleted. Every key must be stored, else
        RecordNotFoundError and nothing changes. Interrupted removals are finished first."""
        self._writable("remove records")
        return remove_keys(self, self._loc, keys, owner=owner)

    def finish_removals(self) -> list[int]:
        """Complete (or drop) removals a crash interrupted; the shards finished."""
        self._writable("finish interrupted removals")
        return finish_removals(self, self._loc)

    def pending_removals(self) -> list[dict[str, Any]]:
        """Removals a crash interrupted (normally none); see :mod:`storage.removal`."""
        return pending_removals(self, self._loc)

    def next_shard(self) -> int:
        """The first shard number after every completed or claimed shard (for appends)."""
        return self._parts.ledger.next_shard()

    # -- the key index --------------------------------------------------------------------
    def build_index(self) -> dict[str, Any]:
        """(Re)build the key table over every completed shard and point the attributes at
        it; returns the ``key_table`` attribute.

        The table is derived data: shard writers never touch it, so it may be built at any
        time (``cdc archive`` does at the end of every job); shards committed later are
        found the old way until the next build. Cost: the index's refresh (entries of
        shards the previous table covers come from its one entries section; newer shards'
        metadata), one read of each newer shard's payload index, one PUT, one ``zarr.json``
        rewrite. The previous table object is deleted after the switch (a reader still
        holding it falls back). Meant for one process at a time, like :meth:`set_tiers`:
        two concurrent builds leave the last one's table (both are correct).
        """
        self._writable("build the key index")
        return build_key_table(self._parts, self._loc)

    def ensure_index(self) -> bool:
        """Build the key table unless the current one covers exactly the completed shards
        (what a job does at its end: a rerun with nothing new rewrites nothing); returns
        whether it built one."""
        info = self._parts.index.table()
        if info is not None and info.shards == set(self.completed_shards()):
            return False
        self.build_index()
        return True

    def drop_index(self) -> None:
        """Stop readers using the key table (delete it and its attribute): lookups go
        through shard metadata until the next :meth:`build_index`."""
        self._writable("drop the key index")
        drop_key_table(self._parts, self._loc)

    def refresh(self) -> None:
        """Pick up shards completed (or discarded) since the index was built.

        A shard whose metadata is corrupt is left out of the index and remembered: lookups
        in the other shards keep working, while listings and misses report it.
        """
        self._parts.index.refresh()

    def keys(self) -> list[str]:
        """Every key in completed shards, in (shard, row) order; duplicates listed once."""
        return self._parts.index.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return self._parts.index.count()

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self._parts.index.locate(key)
        except RecordNotFoundError:
            return False
        except DuplicateKeyError:
            return True
        return True

    def duplicates(self) -> dict[str, list[int]]:
        """Keys stored in more than one completed shard -> the shards holding them."""
        return self._parts.index.duplicates()

    def info(self, key: str) -> RecordInfo:
        """A record's metadata (size, status, error, byte count) without its payload."""
        return entry_info(self._parts.index.locate(key))

    def failed(self) -> list[RecordInfo]:
        """Records stored with status "failed", with their error messages."""
        return [i for i in self.infos() if not i.ok]

    def infos(self, shards: Iterable[int] | None = None) -> Iterator[RecordInfo]:
        """Metadata of every record, shard by shard (no payload reads)."""
        todo = self.completed_shards() if shards is None else list(shards)
        for entries in self._parts.index.shard_entries(todo):
            for e in entries:
                yield entry_info(e)

    def summary(self) -> dict[str, Any]:
        """Counts for a job summary: shards, records, ok, failed, payload bytes, claims."""
        return self._parts.ledger.summary()

    # -- payload reads --------------------------------------------------------------------
    def __getitem__(self, key: str) -> Record:
        """The record with ``key``; its payload is read and its checksum verified."""
        e = self._parts.index.locate(key)
        try:
            return entry_record(e, self._parts.payload.read_row(e), self.url)
        except CorruptArchiveError:
            if not e.from_table:
                raise
        # The key table's answer did not hold (a stale or damaged table): the shard's
        # own metadata decides, and raises if the record itself is corrupt.
        e = self._parts.index.locate(key, slow=True)
        return entry_record(e, self._parts.payload.read_row(e), self.url)

    def read_many(self, keys: Iterable[str], *, concurrency: int = 32) -> list[Record]:
        """Several records, fetched concurrently (what a decode job on S3 wants); each
        is checksum-verified like ``archive[key]``."""
        keys = list(keys)
        where = [self._parts.index.locate(k) for k in keys]
        data = self._parts.payload.read_rows(where, concurrency=concurrency)
        out = []
        for k, e, d in zip(keys, where, data):
            try:
                out.append(entry_record(e, d, self.url))
            except CorruptArchiveError:
                if not e.from_table:
                    raise
                out.append(self[k])
        return out

    def get(self, key: str, default: Any = None) -> Record | Any:
        try:
            return self[key]
        except RecordNotFoundError:
            return default

    def read_prefix(self, key: str, nbytes: int) -> bytes:
        """The first ``nbytes`` of a record's bitstream (a progressive codec's preview).

        On local files and object stores this reads only those bytes (plus the shard index
        once per shard); it cannot be checksummed, the full read can.
        """
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
        e = self._parts.index.locate(key)
        try:
            return self._parts.payload.read_row(e, limit=nbytes)
        except CorruptArchiveError:
            if not e.from_table:
                raise
        return self._parts.payload.read_row(self._parts.index.locate(key, slow=True), nbytes)

    def records(self, shards: Iterable[int] | None = None) -> Iterator[Record]:
        """Every record, shard by shard, reading one shard's payload at a time."""
        for s in self.completed_shards() if shards is None else list(shards):
            yield from self._parts.payload.shard_records(self._parts.index.meta(s))

    def metadata(self, key: str) -> dict[str, Any]:
        """The metadata stored with a record (a photo's capture date, camera, position: see
        :mod:`pipeline.photo_metadata`), ``{}`` where it has none. One small read per shard
        that has any, cached; shards without metadata cost no read."""
        e = self._parts.index.locate(key)
        held = self._parts.meta.shard(
            e.shard, lambda: self._parts.ledger.require_manifest(e.shard))
        return dict(held.get(key, {}))

    def verify(self, *, data: bool = True) -> dict[str, Any]:
        """Check every completed shard (metadata digests, duplicates, and with ``data``
        every record's CRC); raise one error listing every problem, else return summary()."""
        verify_parts(self._parts, data=data)
        return self.summary()

    # -- decoded-image cache --------------------------------------------------------------
    def cache_get(self, key: str, tier: str) -> bytes | None:
        """A decoded image cached for ``(key, tier)``, or None."""
        return self._parts.cache.get(key, tier)

    def cache_put(self, key: str, tier: str, data: bytes) -> None:
        """Cache a decoded image (e.g. PNG bytes); overwrites, atomic per entry."""
        self._writable("write to the cache")
        self._parts.cache.put(key, tier, data)

    def cache_clear(self, tier: str | None = None) -> None:
        """Drop the cache of one tier (any settings), or the whole cache."""
        self._writable("clear the cache")
        self._parts.cache.clear(tier)


def _reopen(url: str, storage_options: dict[str, Any], read_only: bool) -> Archive:
    return Archive.open(url, storage_options=storage_options or None, read_only=read_only)


__all__ = ["Archive", "ArchiveError"]
