"""The archive's zarr group: create it, recognise it, open it, rewrite its metadata.

Creation validates everything before the first byte is stored and never overwrites;
opening sniffs ``zarr.json`` itself first so that "not an archive", "a zarr v2 store",
"a newer format" and "cannot reach the store" each get their own clear error instead of
whatever zarr would raise.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from .attributes import checked_tiers
from .backend import Location, run
from .errors import (
    ArchiveExistsError,
    ArchiveNotFoundError,
    CorruptArchiveError,
    FormatVersionError,
    NotAnArchiveError,
)
from .layout import (
    ATTRS_KEY,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_INNER_CHUNKS,
    PAYLOAD,
    ROW_ARRAYS,
    default_max_shard_bytes,
)
from .records import STATUS_CODES


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """zarr warns that consolidated metadata is not in the v3 spec yet, and that our
    manifest/claims/cache folders are not zarr nodes; both are expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr.*")
        yield


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cdc-toolkit")
    except PackageNotFoundError:
        return "unknown"


def _checked_layout(shard_size: int, max_shards: int, chunk_bytes: int,
                    max_shard_bytes: int | None) -> int:
    """``max_shard_bytes`` (None: the default for the others), once every layout number is
    one the archive can use; else a ValueError naming the number."""
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
    return max_shard_bytes


def create_group(
    url: str,
    *,
    codec_id: str,
    model_id: str,
    weights_digest: str,
    codec_config: Mapping[str, Any] | None,
    tiers: Mapping[str, Mapping[str, Any]] | None,
    shard_size: int,
    max_shards: int,
    chunk_bytes: int,
    max_shard_bytes: int | None,
    info: Mapping[str, Any] | None,
    storage_options: dict[str, Any] | None,
) -> None:
    """Validate the arguments of ``Archive.create`` and write an empty archive at ``url``."""
    max_shard_bytes = _checked_layout(shard_size, max_shards, chunk_bytes, max_shard_bytes)
    for name, v in (
        ("codec_id", codec_id),
        ("model_id", model_id),
        ("weights_digest", weights_digest),
    ):
        if not isinstance(v, str) or not v:
            raise ValueError(f"{name} must be a non-empty str, got {v!r}")
    attrs = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "codec": {"id": codec_id, "config": dict(codec_config or {})},
        "model": {"id": model_id, "weights_digest": weights_digest},
        "tiers": checked_tiers(url, tiers or {}),
        # False until the first decoded image is cached (DecodedCache.put sets it), so a
        # reader of an archive without a cache area does not probe it on every read.
        "decoded_cache": False,
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
        raise ValueError(f"{url}: codec_config/tiers/info must be JSON-serialisable ({e})") from e
    loc = Location(url, storage_options)
    try:
        occupied = loc.exists_at_all()
    except Exception as e:  # noqa: BLE001  (any store failure becomes one line)
        err = loc.access_error(e, "create an archive there")
        if err.reason == "other":
            err.args = (f"{err}; does the bucket/directory exist and are the credentials "
                        "right?", err.reason)
        raise err from e
    if occupied:
        raise ArchiveExistsError(
            f"{url}: already holds data; Archive.create never overwrites "
            "(use Archive.open, or choose a new URL)"
        )
    # Built in memory, then copied with the root zarr.json last: a reader never sees a
    # half-made archive, and a failed copy (a read-only bucket, a dropped connection)
    # removes what it wrote, so the URL is left as empty as it was found.
    staging = MemoryStore()
    with quiet_zarr():
        _build(staging, attrs, shard_size, max_shards, chunk_bytes, max_shard_bytes)
    _copy_root_last(staging, loc)


def _build(store: MemoryStore, attrs: dict[str, Any], shard_size: int, max_shards: int,
           chunk_bytes: int, max_shard_bytes: int) -> None:
    cap = max_shards * shard_size
    group = zarr.create_group(store=store, zarr_format=3, attributes={ATTRS_KEY: attrs})
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
    zarr.consolidate_metadata(store)


def _copy_root_last(staging: MemoryStore, loc: Location) -> None:
    async def keys() -> list[str]:
        return [k async for k in staging.list()]

    names = sorted(run(keys()), key=lambda k: (k == "zarr.json", k))
    written: list[str] = []
    try:
        for name in names:
            buf = run(staging.get(name, default_buffer_prototype()))
            assert buf is not None
            run(loc.set(name, buf.to_bytes()))
            written.append(name)
    except Exception as e:  # noqa: BLE001  (any store failure becomes one line)
        for name in reversed(written):
            with contextlib.suppress(Exception):  # best effort: the store just failed
                run(loc.delete(name))
        raise loc.access_error(e, "create an archive there", writing=True) from e


def _sniff_attrs(loc: Location) -> tuple[dict[str, Any], bytes]:
    """The ``cdc_archive`` attributes from ``zarr.json`` (and its bytes, so that zarr need
    not fetch it again), or the error saying what is there."""
    url = loc.url
    try:
        raw = run(loc.get("zarr.json"))
        if raw is None:
            if run(loc.get(".zgroup")) is not None or run(loc.get(".zarray")) is not None:
                raise NotAnArchiveError(f"{url}: is a zarr v2 store, not a cdc archive")
            empty = not loc.exists_at_all()  # also: does the bucket exist?
    except NotAnArchiveError:
        raise
    except Exception as e:  # noqa: BLE001  (any store failure becomes one line)
        err = loc.access_error(e, "read the archive")
        if err.reason == "other":
            err.args = (f"{err}; check the URL, credentials and endpoint (storage_options "
                        "or AWS_* environment variables)", err.reason)
        raise err from e
    if raw is None:
        if empty:
            raise ArchiveNotFoundError(f"{url}: no zarr.json there (nothing is stored there)")
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
    return attrs, raw


def open_group(
    url: str, storage_options: dict[str, Any] | None, read_only: bool
) -> tuple[Location, zarr.Group, dict[str, Any]]:
    """``(location, group, attributes)`` of the archive at ``url``; never creates anything."""
    loc = Location(url, storage_options, read_only=read_only)
    if loc.root_missing():
        raise ArchiveNotFoundError(f"{url}: does not exist")
    attrs, raw = _sniff_attrs(loc)
    with quiet_zarr():
        group = _group_from_bytes(loc, raw)
        if group is None:
            group = zarr.open_group(loc.store, mode="r" if read_only else "r+", zarr_format=3)
    return loc, group, attrs


def _group_from_bytes(loc: Location, raw: bytes) -> zarr.Group | None:
    """The group from the ``zarr.json`` bytes already fetched (one GET opens an archive,
    not two: on S3 each costs a round trip). None if this zarr lacks the way to do it."""
    try:
        from zarr.core.group import AsyncGroup
        from zarr.storage import StorePath

        buf = default_buffer_prototype().buffer.from_bytes(raw)
        return zarr.Group(AsyncGroup._from_bytes_v3(StorePath(loc.store, ""), buf, None))
    except (ImportError, AttributeError, TypeError):
        return None


def update_attrs(loc: Location, change: Callable[[dict[str, Any]], dict[str, Any]]
                 ) -> dict[str, Any]:
    """Apply ``change`` to the ``cdc_archive`` attributes as stored *now* (re-read, so a
    field another process set since this one opened is kept), store and consolidate;
    returns the attributes as they were."""
    raw = run(loc.get("zarr.json"))
    if raw is None:
        raise ArchiveNotFoundError(f"{loc.url}: zarr.json vanished")
    try:
        old = json.loads(raw)["attributes"][ATTRS_KEY]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptArchiveError(f"{loc.url}: zarr.json has no readable attributes") from e
    with quiet_zarr():
        group = _group_from_bytes(loc, raw) or zarr.open_group(loc.store, mode="r+",
                                                              zarr_format=3)
        group.update_attributes({ATTRS_KEY: change(dict(old))})
        zarr.consolidate_metadata(loc.store)
    return old


def write_attrs(group: zarr.Group, attrs: dict[str, Any]) -> None:
    """Store a new attributes document (then :func:`consolidate`, so ``open`` sees it)."""
    group.update_attributes({ATTRS_KEY: attrs})


def consolidate(loc: Location) -> None:
    """Rewrite the consolidated metadata (one GET opens the archive)."""
    with quiet_zarr():
        zarr.consolidate_metadata(loc.store)
