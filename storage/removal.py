"""Removing records for good: a photo archived by mistake, or one its owner wants gone.

Shards are written whole and never edited in place (see :mod:`storage.layout`), so a shard
that holds a record to remove is *replaced*: its other records (bitstreams, errors and
metadata, copied byte for byte, not re-encoded) go into a new shard, then the old shard's
manifest entry, metadata, row chunks and payload object are deleted, so the removed record's
bytes and key leave the store. The key table (which lists keys) is rebuilt, and the decoded
images cached for the removed keys, under any tier and settings, are deleted.

Crash safety, because "existing data is never lost": before touching a shard the remover
writes an intent (``removals/<shard>.json``: the shard, the new shard, the old manifest's
digest). The copy is complete before anything is deleted, and the copy's manifest names
the shard it replaces. :func:`finish_removals`, which every removal and every archive job
runs first, completes an interrupted one (deletes what the intent says once the copy is
complete) or drops it (the copy never completed: nothing was removed). Between the copy and
the deletion the kept records are stored twice, identically; readers see one of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, Protocol

from .backend import Location, run
from .errors import CorruptArchiveError, DuplicateKeyError, RecordNotFoundError
from .keys import check_key
from .layout import CACHE_DIR
from .parts import ArchiveParts
from .records import Record, RecordInfo


class Archive(Protocol):
    """What a removal uses of :class:`storage.Archive` (a protocol: no import cycle)."""

    @property
    def url(self) -> str: ...

    @property
    def parts(self) -> ArchiveParts: ...

    def check_writable(self) -> None: ...

    def info(self, key: str) -> RecordInfo: ...

    def infos(self, shards: Iterable[int] | None = None) -> Iterator[RecordInfo]: ...

    def records(self, shards: Iterable[int] | None = None) -> Iterator[Record]: ...

    def manifest(self, shard: int) -> dict[str, Any] | None: ...

    def claim(self, shard: int) -> dict[str, Any] | None: ...

    def next_shard(self) -> int: ...

    def write_shard(self, shard: int, records: Iterable[Record], **kwargs: Any
                    ) -> dict[str, Any]: ...

    def discard_shard(self, shard: int) -> None: ...

    def ensure_index(self) -> bool: ...

REMOVALS_DIR = "removals"
_MAX_INTENT_BYTES = 4096
_MAX_PENDING = 64
_LOOKUPS = 256  # up to this many keys are looked up one by one, not by a scan


def removal_key(shard: int) -> str:
    return f"{REMOVALS_DIR}/{shard:08d}.json"


def remove_keys(arch: Archive, loc: Location, keys: Iterable[str], *,
                owner: str | None = None) -> dict[str, Any]:
    """Remove ``keys`` from ``arch`` for good; every key must be stored (else
    RecordNotFoundError naming the first missing one, and nothing changes). Returns
    ``{"removed", "shards_replaced", "bytes_freed", "cached_deleted"}``."""
    arch.check_writable()
    doomed = {check_key(k, arch.url) for k in keys}
    finish_removals(arch, loc)
    where, freed = _locate(arch, doomed)
    missing = sorted(doomed - set().union(*where.values()))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RecordNotFoundError(f"{arch.url}: no record {missing[0]!r}{more}; nothing "
                                  "was removed")
    for shard in sorted(where):
        _replace_shard(arch, loc, shard, where[shard], owner)
    cached = _delete_cached(loc, doomed)
    if where:
        arch.ensure_index()
    return {"removed": len(doomed), "shards_replaced": len(where), "bytes_freed": freed,
            "cached_deleted": cached}


def _locate(arch: Archive, doomed: set[str]) -> tuple[dict[int, set[str]], int]:
    """shard -> the doomed keys it holds, and their bytes. A few keys are looked up one by
    one (through the key table: one ranged GET each on an object store); many, or a key
    stored twice, scan every shard's rows, which finds each copy."""
    where: dict[int, set[str]] = {}
    freed = 0
    if len(doomed) <= _LOOKUPS:
        try:
            for k in doomed:
                try:
                    info = arch.info(k)
                except RecordNotFoundError:
                    continue  # the caller names what is missing
                where.setdefault(info.shard, set()).add(k)
                freed += info.nbytes
            return where, freed
        except DuplicateKeyError:
            where, freed = {}, 0
    for info in arch.infos():
        if info.key in doomed:
            where.setdefault(info.shard, set()).add(info.key)
            freed += info.nbytes
    return where, freed


def _replace_shard(arch: Archive, loc: Location, shard: int, doomed: set[str],
                   owner: str | None) -> None:
    parts = arch.parts
    manifest = parts.ledger.require_manifest(shard)
    held = parts.meta.shard(shard, lambda: manifest)
    kept = [replace(r, meta=held.get(r.key, {})) for r in arch.records([shard])
            if r.key not in doomed]  # every kept record's checksum is verified here
    into = arch.next_shard() if kept else None
    intent = {"shard": shard, "into": into, "digest": _digest(manifest)}
    run(loc.set(removal_key(shard), json.dumps(intent).encode()))
    if kept:
        arch.write_shard(into, kept, owner=owner, if_complete="error", replaces=shard)
    _delete_shard(arch, shard)
    run(loc.delete(removal_key(shard)))


def _digest(manifest: dict[str, Any]) -> str:
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _delete_shard(arch: Archive, shard: int) -> None:
    """The manifest entry first (readers stop seeing the shard), then its objects."""
    arch.discard_shard(shard)
    run(arch.parts.arrays.delete_shard(shard))


def pending_removals(arch: Archive, loc: Location) -> list[dict[str, Any]]:
    """The intents of removals that did not finish (normally none), checked: a hostile or
    damaged intent raises CorruptArchiveError naming it."""
    out = []
    names = sorted(run(loc.list(REMOVALS_DIR + "/")))
    if len(names) > _MAX_PENDING:  # a removal keeps one intent at a time
        raise CorruptArchiveError(f"{arch.url}: {REMOVALS_DIR}/ holds {len(names)} objects, "
                                  f"over {_MAX_PENDING}: not what removals leave")
    for name in names:
        raw = run(loc.get(name))
        if raw is None:
            continue
        if len(raw) > _MAX_INTENT_BYTES:
            raise CorruptArchiveError(f"{arch.url}: {name} is over {_MAX_INTENT_BYTES} bytes")
        try:
            d = json.loads(raw)
            ok = (isinstance(d, dict) and _shard_number(d.get("shard"), arch)
                  and (d.get("into") is None or _shard_number(d.get("into"), arch))
                  and isinstance(d.get("digest"), str) and name == removal_key(d["shard"]))
        except ValueError:
            ok = False
        if not ok:
            raise CorruptArchiveError(f"{arch.url}: {name} is not a removal record")
        out.append(d)
    return out


def _shard_number(v: Any, arch: Archive) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)
            and 0 <= v < arch.parts.layout.max_shards)


def finish_removals(arch: Archive, loc: Location) -> list[int]:
    """Complete (or, where the copy never completed, drop) interrupted removals; returns
    the shards whose removal this finished."""
    done = []
    for intent in pending_removals(arch, loc):
        shard, into = intent["shard"], intent["into"]
        copied = into is None or (arch.manifest(into) or {}).get("replaces") == shard
        if copied:
            stored = arch.manifest(shard)
            if stored is not None and _digest(stored) == intent["digest"]:
                _delete_shard(arch, shard)
            elif stored is None and arch.claim(shard) is None:
                run(arch.parts.arrays.delete_shard(shard))  # objects left by the crash
            # else: the number was taken by a later writer; the old objects are gone already
            done.append(shard)
        run(loc.delete(removal_key(shard)))
    if done:
        arch.ensure_index()
    return done


def _delete_cached(loc: Location, keys: set[str]) -> int:
    """Delete every decoded image cached for ``keys`` (any tier, any settings): one listing
    of the cache, then one delete per entry found."""
    suffixes = set()
    for k in keys:
        h = hashlib.sha256(k.encode("utf-8")).hexdigest()
        suffixes.add(f"/{h[:2]}/{h[2:]}")
    found = [p for p in run(loc.list(CACHE_DIR + "/")) if p[-66:] in suffixes]
    for p in found:
        run(loc.delete(p))
    return len(found)
