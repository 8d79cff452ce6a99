"""``Archive``: one compressed collection, addressed by URL.

Readers see only *completed* shards (those with a manifest entry). Lookups go
key -> (shard, row) through an in-memory index built from each shard's small ``key``
chunk; a record's payload is then fetched with byte-range reads of that one shard object,
so neither lookups nor reads touch other records' payloads.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from .backend import Location, run
from .cache import cache_key
from .errors import (
    ArchiveError,
    ArchiveExistsError,
    CorruptArchiveError,
    DuplicateKeyError,
    FormatVersionError,
    ModelMismatchError,
    NotAnArchiveError,
    ReadOnlyArchiveError,
    RecordNotFoundError,
    UnknownTierError,
)
from .keys import check_key, check_tier_id
from .layout import (
    ATTRS_KEY,
    CACHE_DIR,
    CLAIMS_DIR,
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_SHARDS,
    DEFAULT_SHARD_SIZE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_DIR,
    MAX_INNER_CHUNKS,
    PAYLOAD,
    ROW_ARRAYS,
    claim_key,
    default_max_shard_bytes,
    index_nbytes,
    inner_chunk_missing,
    manifest_key,
    parse_shard_index,
    payload_codecs_expected,
    shard_from_name,
)
from .records import STATUS_CODES, STATUS_NAMES, Record, RecordInfo, checksum, rows_digest
from .writer import IfComplete, ShardWriter

_LOAD_BATCH = 64  # shards whose metadata is fetched concurrently
_INDEX_CACHE = 256  # shard indexes kept in memory (16 B per inner chunk each)


def _quiet_zarr() -> warnings.catch_warnings:
    """zarr warns that consolidated metadata is not in the v3 spec yet, and that our
    manifest/claims/cache folders are not zarr nodes; both are expected here."""
    cm = warnings.catch_warnings()
    cm.__enter__()
    warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
    warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr.*")
    return cm


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cdc-toolkit")
    except PackageNotFoundError:
        return "unknown"


def _digest_core(d: str) -> str:
    d = d.strip().lower()
    return d.split(":", 1)[1] if ":" in d else d


@dataclass
class _ShardMeta:
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
        self._attrs = attrs
        lay = attrs.get("layout", {})
        try:
            self.shard_size = int(lay["shard_size"])
            self.max_shards = int(lay["max_shards"])
            self.chunk_bytes = int(lay["chunk_bytes"])
            self.max_shard_bytes = int(lay["max_shard_bytes"])
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptArchiveError(
                f"{self.url}: layout attributes are incomplete ({e!r})"
            ) from e
        self._n_inner = self.max_shard_bytes // self.chunk_bytes
        try:
            self._arrays = {name: group[name] for name in ROW_ARRAYS}
            self._payload = group[PAYLOAD]
        except KeyError as e:
            raise CorruptArchiveError(f"{self.url}: array {e} is missing") from e
        for name, arr in self._arrays.items():
            if arr.shape != (self.max_shards * self.shard_size,) or arr.chunks != (
                self.shard_size,
            ):
                raise CorruptArchiveError(f"{self.url}: array {name!r} does not match the layout")
        if self._payload.shape != (self.max_shards, self.max_shard_bytes):
            raise CorruptArchiveError(f"{self.url}: array {PAYLOAD!r} does not match the layout")
        codecs = json.loads(json.dumps(self._payload.metadata.to_dict()["codecs"]))
        # Direct range reads need the exact codec chain we write; anything else -> zarr reads.
        self._direct = codecs == payload_codecs_expected(self.chunk_bytes)
        self._lock = threading.RLock()
        self._metas: dict[int, _ShardMeta] = {}
        self._index: dict[str, tuple[int, int]] = {}
        self._dups: dict[str, list[tuple[int, int]]] = {}
        self._indexed: set[int] = set()
        self._ordered: list[str] | None = None
        self._bad: dict[int, str] = {}
        self._refreshed = False
        self._shard_indexes: OrderedDict[int, np.ndarray] = OrderedDict()

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
        for name, v in (
            ("shard_size", shard_size),
            ("max_shards", max_shards),
            ("chunk_bytes", chunk_bytes),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if max_shard_bytes is None:
            max_shard_bytes = default_max_shard_bytes(shard_size, chunk_bytes)
        if max_shard_bytes % chunk_bytes or max_shard_bytes < chunk_bytes:
            raise ValueError(
                f"max_shard_bytes={max_shard_bytes} must be a multiple of chunk_bytes={chunk_bytes}"
            )
        if max_shard_bytes // chunk_bytes > MAX_INNER_CHUNKS:
            raise ValueError(
                f"max_shard_bytes/chunk_bytes = {max_shard_bytes // chunk_bytes} inner chunks per "
                f"shard is more than {MAX_INNER_CHUNKS}; raise chunk_bytes"
            )
        for name, v in (
            ("codec_id", codec_id),
            ("model_id", model_id),
            ("weights_digest", weights_digest),
        ):
            if not isinstance(v, str) or not v:
                raise ValueError(f"{name} must be a non-empty str, got {v!r}")
        tiers_d = cls._checked_tiers(url, tiers or {})
        attrs = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "codec": {"id": codec_id, "config": dict(codec_config or {})},
            "model": {"id": model_id, "weights_digest": weights_digest},
            "tiers": tiers_d,
            "layout": {
                "shard_size": shard_size,
                "max_shards": max_shards,
                "chunk_bytes": chunk_bytes,
                "max_shard_bytes": max_shard_bytes,
                "checksum": "crc32",
                "status_codes": dict(STATUS_CODES),
                "row_arrays": list(ROW_ARRAYS),
                "payload": PAYLOAD,
            },
            "created": {
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "by": f"cdc-toolkit {_package_version()}",
                "zarr": zarr.__version__,
                "host": socket.gethostname(),
                **dict(info or {}),
            },
        }
        try:
            json.dumps(attrs)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{url}: codec_config/tiers/info must be JSON-serialisable ({e})"
            ) from e
        loc = Location(url, storage_options)
        try:
            occupied = loc.exists_at_all()
        except OSError as e:
            raise ArchiveError(
                f"{url}: cannot create an archive there ({type(e).__name__}: {e}); "
                "does the bucket/directory exist and are the credentials right?"
            ) from e
        if occupied:
            raise ArchiveExistsError(
                f"{url}: already holds data; Archive.create never overwrites "
                "(use Archive.open, or choose a new URL)"
            )
        cap = max_shards * shard_size
        cm = _quiet_zarr()
        try:
            group = zarr.create_group(store=loc.store, zarr_format=3, attributes={ATTRS_KEY: attrs})
            for name, (dtype, fill) in ROW_ARRAYS.items():
                group.create_array(
                    name,
                    shape=(cap,),
                    chunks=(shard_size,),
                    fill_value=fill,
                    dtype=str if dtype == "string" else dtype,
                )
            group.create_array(
                PAYLOAD,
                shape=(max_shards, max_shard_bytes),
                dtype="uint8",
                chunks=(1, chunk_bytes),
                shards=(1, max_shard_bytes),
                compressors=None,
                fill_value=0,
            )
            zarr.consolidate_metadata(loc.store)
        finally:
            cm.__exit__(None, None, None)
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
        loc = Location(url, storage_options, read_only=read_only)
        if loc.root_missing():
            raise NotAnArchiveError(f"{url}: does not exist")
        try:
            raw = run(loc.get("zarr.json"))
        except OSError as e:
            raise ArchiveError(
                f"{url}: cannot read the archive ({type(e).__name__}: {e}); check the URL, "
                "credentials and endpoint (storage_options or AWS_* environment variables)"
            ) from e
        if raw is None:
            if run(loc.get(".zgroup")) is not None or run(loc.get(".zarray")) is not None:
                raise NotAnArchiveError(f"{url}: is a zarr v2 store, not a cdc archive")
            raise NotAnArchiveError(f"{url}: no zarr.json there; not a cdc archive")
        try:
            meta = json.loads(raw)
        except ValueError as e:
            raise NotAnArchiveError(f"{url}: zarr.json is not valid JSON ({e})") from e
        if (
            not isinstance(meta, dict)
            or meta.get("zarr_format") != 3
            or meta.get("node_type") != "group"
        ):
            raise NotAnArchiveError(f"{url}: zarr.json is not a zarr v3 group; not a cdc archive")
        attrs = (meta.get("attributes") or {}).get(ATTRS_KEY)
        if not isinstance(attrs, dict) or attrs.get("format") != FORMAT_NAME:
            raise NotAnArchiveError(
                f"{url}: a zarr group without '{ATTRS_KEY}' attributes; not a cdc archive"
            )
        version = attrs.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise CorruptArchiveError(f"{url}: format_version {version!r} is not a positive int")
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{url}: archive format version {version} is newer than this cdc-toolkit "
                f"reads (<= {FORMAT_VERSION}); upgrade cdc-toolkit"
            )
        cm = _quiet_zarr()
        try:
            group = zarr.open_group(loc.store, mode="r" if read_only else "r+", zarr_format=3)
        finally:
            cm.__exit__(None, None, None)
        arch = cls(loc, group, attrs)
        if expected_digest is not None:
            arch.check_model(expected_digest)
        return arch

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.url, self._loc.storage_options, self.read_only))

    def __repr__(self) -> str:
        return f"Archive({self.url!r}, codec={self.codec_id!r}, model={self.model_id!r})"

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
        return json.loads(json.dumps(self._attrs))

    @property
    def format_version(self) -> int:
        return int(self._attrs["format_version"])

    @property
    def codec_id(self) -> str:
        return self._attrs["codec"]["id"]

    @property
    def codec_config(self) -> dict[str, Any]:
        return dict(self._attrs["codec"].get("config", {}))

    @property
    def model_id(self) -> str:
        return self._attrs["model"]["id"]

    @property
    def weights_digest(self) -> str:
        return self._attrs["model"]["weights_digest"]

    @property
    def tiers(self) -> dict[str, dict[str, Any]]:
        return json.loads(json.dumps(self._attrs.get("tiers", {})))

    @property
    def created(self) -> dict[str, Any]:
        return dict(self._attrs.get("created", {}))

    def check_model(self, digest: str) -> None:
        """Raise :class:`ModelMismatchError` unless ``digest`` is the archive's weights digest.

        Comparison ignores case and an ``algo:`` prefix present on one side only.
        """
        if _digest_core(digest) != _digest_core(self.weights_digest):
            raise ModelMismatchError(
                f"{self.url}: written with model {self.model_id!r} weights digest "
                f"{self.weights_digest!r}, but the codec in hand has {digest!r}; decoding "
                "with other weights gives wrong images"
            )

    @staticmethod
    def _checked_tiers(url: str, tiers: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for tid, settings in tiers.items():
            check_tier_id(tid, url)
            if not isinstance(settings, Mapping):
                raise TypeError(f"{url}: tier {tid!r} settings must be a dict, got {settings!r}")
            out[tid] = dict(settings)
        return out

    def set_tiers(self, tiers: Mapping[str, Mapping[str, Any]], *, replace: bool = False) -> None:
        """Add/update quality tiers (or replace them all) and re-consolidate metadata.

        Meant for the job driver only: two concurrent ``set_tiers`` calls race (last wins).
        """
        self._writable("set tiers")
        new = {} if replace else self.tiers
        new.update(self._checked_tiers(self.url, tiers))
        attrs = self.attrs
        attrs["tiers"] = new
        try:
            json.dumps(attrs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.url}: tiers must be JSON-serialisable ({e})") from e
        self._group.update_attributes({ATTRS_KEY: attrs})
        self._attrs = attrs
        self.consolidate()

    def consolidate(self) -> None:
        """Rewrite the consolidated metadata (one GET opens the archive).

        Adding shards never changes array metadata (shapes are fixed at create), so the
        consolidated view stays valid as shards are written; only attribute changes
        (:meth:`set_tiers`) need this, and they call it.
        """
        self._writable("consolidate metadata")
        cm = _quiet_zarr()
        try:
            zarr.consolidate_metadata(self._loc.store)
        finally:
            cm.__exit__(None, None, None)

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyArchiveError(f"{self.url}: opened read-only; cannot {what}")

    # -- shards ---------------------------------------------------------------------------
    def writer(
        self,
        shard: int,
        *,
        owner: str | None = None,
        takeover: bool = False,
        if_complete: IfComplete = "keys",
        check_duplicates: bool = False,
    ) -> ShardWriter:
        """A writer for shard ``shard`` (use as a context manager).

        ``owner``: recorded in the claim and the manifest (e.g. a job id); ``takeover``:
        replace a claim left by a dead writer; ``if_complete``: what re-writing a completed
        shard does ("keys": no-op if the key list matches, else ShardCompleteError;
        "exact": same but compares all fields and checksums; "error": always refuse);
        ``check_duplicates``: refuse keys already stored in other shards (reads every
        completed shard's key chunk, so off by default).
        """
        return ShardWriter(
            self,
            shard,
            owner=owner,
            takeover=takeover,
            if_complete=if_complete,
            check_duplicates=check_duplicates,
        )

    def write_shard(self, shard: int, records: Iterable[Record], **kwargs: Any) -> dict[str, Any]:
        """Write a whole shard from an iterable; returns its manifest entry."""
        with self.writer(shard, **kwargs) as w:
            w.write_all(records)
        assert w.manifest is not None
        return w.manifest

    def completed_shards(self) -> list[int]:
        """Shards with a manifest entry (one listing request), ascending."""
        names = run(self._loc.list(MANIFEST_DIR + "/"))
        return sorted({s for s in map(shard_from_name, names) if s is not None})

    def is_complete(self, shard: int) -> bool:
        return run(self._loc.get(manifest_key(shard))) is not None

    def manifest(self, shard: int) -> dict[str, Any] | None:
        """The manifest entry of a completed shard, or None."""
        raw = run(self._loc.get(manifest_key(shard)))
        return None if raw is None else self._parse_manifest(shard, raw)

    def _parse_manifest(self, shard: int, raw: bytes) -> dict[str, Any]:
        try:
            m = json.loads(raw)
            if (
                not isinstance(m, dict)
                or m.get("shard") != shard
                or not isinstance(m.get("records"), int)
            ):
                raise ValueError("unexpected content")
        except ValueError as e:
            raise CorruptArchiveError(
                f"{self.url}: shard {shard}: manifest entry is corrupt ({e})"
            ) from e
        if not 0 <= m["records"] <= self.shard_size:
            raise CorruptArchiveError(
                f"{self.url}: shard {shard}: manifest says {m['records']} records"
            )
        return m

    def _manifest_or_raise(self, shard: int) -> dict[str, Any]:
        m = self.manifest(shard)
        if m is None:
            raise CorruptArchiveError(f"{self.url}: shard {shard}: manifest entry vanished")
        return m

    def claim(self, shard: int) -> dict[str, Any] | None:
        """The current claim on a shard (owner, host, pid, time), or None."""
        raw = run(self._loc.get(claim_key(shard)))
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {"owner": "<unreadable claim>", "token": None}

    def claims(self) -> dict[int, dict[str, Any]]:
        """All open claims: shards being written now, or left behind by crashed writers."""
        out = {}
        for name in run(self._loc.list(CLAIMS_DIR + "/")):
            s = shard_from_name(name)
            if s is not None and (c := self.claim(s)) is not None:
                out[s] = c
        return out

    def release(self, shard: int) -> None:
        """Delete a shard's claim (an operator action; ``takeover=True`` is usually simpler)."""
        self._writable("release a claim")
        run(self._loc.delete(claim_key(shard)))

    def discard_shard(self, shard: int) -> None:
        """Forget a completed shard (delete its manifest entry and claim) so it can be
        re-written: the repair path for a shard that ``verify`` reports as corrupt."""
        self._writable("discard a shard")
        run(self._loc.delete(manifest_key(shard)))
        run(self._loc.delete(claim_key(shard)))
        with self._lock:
            self._metas.pop(shard, None)
            self._shard_indexes.pop(shard, None)

    def next_shard(self) -> int:
        """The first shard number after every completed or claimed shard (for appends)."""
        used = set(self.completed_shards())
        used.update(
            s for s in map(shard_from_name, run(self._loc.list(CLAIMS_DIR + "/"))) if s is not None
        )
        return max(used) + 1 if used else 0

    def _shard_committed(self, shard: int) -> None:
        self._shard_indexes.pop(shard, None)

    def _payload_key(self, shard: int) -> str:
        return f"{PAYLOAD}/{self._payload.metadata.encode_chunk_key((shard, 0))}"

    # -- shard metadata and the key index ------------------------------------------------
    async def _load_meta(self, shard: int) -> _ShardMeta:
        if (m := self._metas.get(shard)) is not None:
            return m
        raw = await self._loc.get(manifest_key(shard))
        if raw is None:
            raise ArchiveError(f"{self.url}: shard {shard} is not complete (no manifest entry)")
        man = self._parse_manifest(shard, raw)
        n, base = man["records"], shard * self.shard_size
        try:
            vals = await asyncio.gather(
                *(a.async_array.getitem(slice(base, base + n)) for a in self._arrays.values())
            )
        except OSError:
            raise
        except Exception as e:
            raise CorruptArchiveError(
                f"{self.url}: shard {shard}: cannot decode its record metadata ({type(e).__name__}: {e})"
            ) from e
        cols = dict(zip(self._arrays, vals))
        meta = _ShardMeta(
            shard=shard,
            manifest=man,
            keys=[str(k) for k in cols["key"]],
            status=np.asarray(cols["status"]),
            height=np.asarray(cols["height"]),
            width=np.asarray(cols["width"]),
            checksum=np.asarray(cols["checksum"]),
            offset=np.asarray(cols["offset"]),
            nbytes=np.asarray(cols["nbytes"]),
            errors=[str(e) for e in cols["error"]],
        )
        digest = rows_digest(
            meta.keys,
            meta.status,
            meta.height,
            meta.width,
            meta.checksum,
            meta.offset,
            meta.nbytes,
            meta.errors,
        )
        if digest != man.get("digest"):
            raise CorruptArchiveError(
                f"{self.url}: shard {shard}: record metadata does not match its manifest digest "
                "(a chunk is missing or corrupt, or two writers wrote this shard)"
            )
        self._metas[shard] = meta
        return meta

    async def _load_metas(self, shards: list[int], return_exceptions: bool = False) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(shards), _LOAD_BATCH):
            out += await asyncio.gather(
                *(self._load_meta(s) for s in shards[i : i + _LOAD_BATCH]),
                return_exceptions=return_exceptions,
            )
        return out

    def refresh(self) -> None:
        """Pick up shards completed (or discarded) since the index was built.

        A shard whose metadata is corrupt is left out of the index and remembered: lookups
        in the other shards keep working, while listings and misses report it.
        """
        with self._lock:
            shards = self.completed_shards()
            if self._indexed - set(shards):  # a shard was discarded: rebuild
                self._index, self._dups, self._indexed = {}, {}, set()
                self._metas = {s: m for s, m in self._metas.items() if s in shards}
            todo = [s for s in shards if s not in self._indexed]
            self._bad = {}
            results = run(self._load_metas(todo, return_exceptions=True))
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

    def _ensure_index(self) -> None:
        if not self._refreshed:
            self.refresh()

    def _locate(self, key: str) -> tuple[_ShardMeta, int]:
        check_key(key, self.url)
        with self._lock:
            self._ensure_index()
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

    def _check_new_keys(self, shard: int, keys: list[str]) -> None:
        self.refresh()
        with self._lock:
            for k in keys:
                where = self._index.get(k)
                if where is not None and where[0] != shard:
                    raise DuplicateKeyError(
                        f"{self.url}: shard {shard}: key {k!r} is already stored in shard {where[0]}"
                    )

    def keys(self) -> list[str]:
        """Every key in completed shards, in (shard, row) order; duplicates listed once."""
        with self._lock:
            self._ensure_index()
            self._raise_if_bad()
            if self._ordered is None:
                self._ordered = sorted(self._index, key=self._index.__getitem__)
            return list(self._ordered)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        with self._lock:
            self._ensure_index()
            self._raise_if_bad()
            return len(self._index)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self._locate(key)
        except RecordNotFoundError:
            return False
        except DuplicateKeyError:
            return True
        return True

    def duplicates(self) -> dict[str, list[int]]:
        """Keys stored in more than one completed shard -> the shards holding them."""
        with self._lock:
            self._ensure_index()
            self._raise_if_bad()
            return {k: sorted({s for s, _ in v}) for k, v in self._dups.items()}

    def info(self, key: str) -> RecordInfo:
        """A record's metadata (size, status, error, byte count) without its payload."""
        meta, row = self._locate(key)
        return meta.info(row)

    def failed(self) -> list[RecordInfo]:
        """Records stored with status "failed", with their error messages."""
        return [i for i in self.infos() if not i.ok]

    def infos(self, shards: Iterable[int] | None = None) -> Iterator[RecordInfo]:
        """Metadata of every record, shard by shard (no payload reads)."""
        todo = self.completed_shards() if shards is None else list(shards)
        for i in range(0, len(todo), _LOAD_BATCH):
            for meta in run(self._load_metas(todo[i : i + _LOAD_BATCH])):
                for row in range(len(meta.keys)):
                    yield meta.info(row)

    def summary(self) -> dict[str, Any]:
        """Counts for a job summary: shards, records, ok, failed, payload bytes, claims."""
        shards = self.completed_shards()
        metas = [self.manifest(s) for s in shards]
        return {
            "url": self.url,
            "completed_shards": len(shards),
            "records": sum(m["records"] for m in metas if m),
            "ok": sum(m.get("ok", 0) for m in metas if m),
            "failed": sum(m.get("failed", 0) for m in metas if m),
            "bytes": sum(m.get("bytes", 0) for m in metas if m),
            "open_claims": sorted(self.claims()),
        }

    # -- payload reads --------------------------------------------------------------------
    async def _shard_index(self, shard: int) -> np.ndarray:
        idx = self._shard_indexes.get(shard)
        if idx is not None:
            self._shard_indexes.move_to_end(shard)
            return idx
        key = self._payload_key(shard)
        raw = await self._loc.get_suffix(key, index_nbytes(self._n_inner))
        if raw is None:
            raise CorruptArchiveError(
                f"{self.url}: shard {shard}: payload object {key!r} is missing"
            )
        try:
            idx = parse_shard_index(raw, self._n_inner)
        except ValueError as e:
            raise CorruptArchiveError(
                f"{self.url}: shard {shard}: payload object {key!r}: {e}"
            ) from e
        self._shard_indexes[shard] = idx
        while len(self._shard_indexes) > _INDEX_CACHE:
            self._shard_indexes.popitem(last=False)
        return idx

    async def _read_payload(self, shard: int, start: int, n: int) -> bytes:
        """Bytes ``[start, start+n)`` of a shard's payload, by ranged reads of its object."""
        if n <= 0:
            return b""
        if not self._direct:
            try:
                arr = await self._payload.async_array.getitem((shard, slice(start, start + n)))
            except OSError:
                raise
            except Exception as e:
                raise CorruptArchiveError(
                    f"{self.url}: shard {shard}: cannot read payload ({e})"
                ) from e
            return np.asarray(arr, dtype=np.uint8).tobytes()
        idx = await self._shard_index(shard)
        c, end = self.chunk_bytes, start + n
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
        key = self._payload_key(shard)
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

    def _record(self, meta: _ShardMeta, row: int, data: bytes) -> Record:
        key = meta.keys[row]
        if checksum(data) != int(meta.checksum[row]):
            raise CorruptArchiveError(
                f"{self.url}: record {key!r} (shard {meta.shard}, row {row}) fails its CRC-32 check"
            )
        status = STATUS_NAMES.get(int(meta.status[row]))
        if status is None:
            raise CorruptArchiveError(f"{self.url}: record {key!r} has an unknown status code")
        return Record(
            key=key,
            data=data,
            height=int(meta.height[row]),
            width=int(meta.width[row]),
            status=status,
            error=meta.errors[row],
        )

    def __getitem__(self, key: str) -> Record:
        """The record with ``key``; its payload is read and its checksum verified."""
        meta, row = self._locate(key)
        data = run(self._read_payload(meta.shard, int(meta.offset[row]), int(meta.nbytes[row])))
        return self._record(meta, row, data)

    def read_many(self, keys: Iterable[str], *, concurrency: int = 32) -> list[Record]:
        """Several records, fetched concurrently (what a decode job on S3 wants); each
        is checksum-verified like ``archive[key]``."""
        where = [self._locate(k) for k in keys]

        async def fetch() -> list[bytes]:
            sem = asyncio.Semaphore(max(1, concurrency))

            async def one(meta: _ShardMeta, row: int) -> bytes:
                async with sem:
                    return await self._read_payload(
                        meta.shard, int(meta.offset[row]), int(meta.nbytes[row])
                    )

            return await asyncio.gather(*(one(m, r) for m, r in where))

        return [self._record(m, r, d) for (m, r), d in zip(where, run(fetch()))]

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
        meta, row = self._locate(key)
        n = min(nbytes, int(meta.nbytes[row]))
        return run(self._read_payload(meta.shard, int(meta.offset[row]), n))

    def records(self, shards: Iterable[int] | None = None) -> Iterator[Record]:
        """Every record, shard by shard, reading one shard's payload at a time."""
        for s in self.completed_shards() if shards is None else list(shards):
            meta = run(self._load_meta(s))
            total = int(meta.offset[-1] + meta.nbytes[-1]) if meta.keys else 0
            blob = run(self._read_payload(s, 0, total))
            for row in range(len(meta.keys)):
                o, n = int(meta.offset[row]), int(meta.nbytes[row])
                yield self._record(meta, row, blob[o : o + n])

    def verify(self, *, data: bool = True) -> dict[str, Any]:
        """Check every completed shard (metadata digests, duplicates, and with ``data``
        every record's CRC); raise one error listing every problem, else return summary()."""
        problems: list[str] = []
        for s in self.completed_shards():
            try:
                meta = run(self._load_meta(s))
                if data:
                    for _ in self.records([s]):
                        pass
            except CorruptArchiveError as e:
                problems.append(str(e))
                self._metas.pop(s, None)
                continue
            del meta
        if problems:
            raise CorruptArchiveError(
                f"{self.url}: {len(problems)} problem(s):\n" + "\n".join(problems)
            )
        self.refresh()
        if dups := self.duplicates():
            first = ", ".join(f"{k!r} in {v}" for k, v in list(dups.items())[:5])
            raise DuplicateKeyError(
                f"{self.url}: {len(dups)} key(s) stored in more than one shard: {first}"
            )
        return self.summary()

    # -- decoded-image cache --------------------------------------------------------------
    def _tier_settings(self, tier: str) -> dict[str, Any]:
        check_tier_id(tier, self.url)
        tiers = self._attrs.get("tiers", {})
        if tier not in tiers:
            raise UnknownTierError(f"{self.url}: no quality tier {tier!r} (tiers: {sorted(tiers)})")
        return tiers[tier]

    def cache_get(self, key: str, tier: str) -> bytes | None:
        """A decoded image cached for ``(key, tier)``, or None."""
        check_key(key, self.url)
        return run(self._loc.get(cache_key(key, tier, self._tier_settings(tier))))

    def cache_put(self, key: str, tier: str, data: bytes) -> None:
        """Cache a decoded image (e.g. PNG bytes); overwrites, atomic per entry."""
        self._writable("write to the cache")
        check_key(key, self.url)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"cache_put takes bytes, got {type(data).__name__}")
        run(self._loc.set(cache_key(key, tier, self._tier_settings(tier)), bytes(data)))

    def cache_clear(self, tier: str | None = None) -> None:
        """Drop the cache of one tier (any settings), or the whole cache."""
        self._writable("clear the cache")
        prefix = CACHE_DIR if tier is None else f"{CACHE_DIR}/{check_tier_id(tier, self.url)}"
        run(self._loc.store.delete_dir(prefix))


def _reopen(url: str, storage_options: dict[str, Any], read_only: bool) -> Archive:
    return Archive.open(url, storage_options=storage_options or None, read_only=read_only)


__all__ = ["Archive", "ArchiveError"]
