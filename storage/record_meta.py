"""Per-record metadata (a photo's capture date, camera, position): one JSON object per shard.

Why an object beside the arrays and not a row array: the arrays of an archive are fixed at
creation, and archives made before this kept none; an optional ``meta/<k>.json`` needs no
new array, costs nothing where a shard has no metadata (its manifest entry then has no
``meta_digest`` and nothing is fetched), and is left alone by toolkits that predate it.

The writer puts the object before the shard's manifest entry, which carries its SHA-256
(``meta_digest``), so a reader sees it only for completed shards and a replaced or damaged
object is caught. Storage does not interpret the values: each record's metadata is a JSON
object of at most :data:`MAX_RECORD_META` bytes (what it means is the pipeline's business).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .backend import Location, run
from .errors import CorruptArchiveError
from .layout import meta_key
from .records import MAX_RECORD_META, check_record_meta

#: Shards whose metadata is kept in memory (a shard of 256 photos holds ≈ 90 KB of it);
#: shards without any are remembered apart, at no cost, so they are never fetched again.
_CACHED_SHARDS = 64


def encode_shard_meta(shard: int, keys: Sequence[str],
                      metas: Sequence[Mapping[str, Any]]) -> bytes | None:
    """The shard's metadata object (records without metadata left out), or None if none."""
    held = {k: dict(m) for k, m in zip(keys, metas) if m}
    if not held:
        return None
    return json.dumps({"shard": shard, "records": held}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()


def meta_digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


class RecordMeta:
    """Reads and writes the metadata objects of one archive (a small per-shard cache)."""

    def __init__(self, loc: Location, shard_size: int) -> None:
        self._loc = loc
        self.url = loc.url
        self._max_bytes = shard_size * (MAX_RECORD_META + 1024) + 1024
        self._cache: OrderedDict[int, dict[str, dict[str, Any]]] = OrderedDict()
        self._without: set[int] = set()  # completed shards whose manifest names no metadata

    def write(self, shard: int, blob: bytes | None) -> None:
        """Put (or, for a shard without metadata, delete a crashed attempt's) object."""
        self.forget(shard)
        run(self._loc.set(meta_key(shard), blob) if blob else self._loc.delete(meta_key(shard)))

    def delete(self, shard: int) -> None:
        self.forget(shard)
        run(self._loc.delete(meta_key(shard)))

    def forget(self, shard: int) -> None:
        self._cache.pop(shard, None)
        self._without.discard(shard)

    def shard(self, shard: int, manifest: Callable[[], Mapping[str, Any]],
              keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """key -> metadata of a completed shard (``{}`` where its manifest names none),
        checked against the manifest's digest, the bound and, given ``keys``, the shard's
        keys; CorruptArchiveError names the shard and the problem. ``manifest`` is called
        only when the shard is not cached."""
        if shard in self._without:
            return {}
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        digest = manifest().get("meta_digest")
        if digest is None:
            self._without.add(shard)
            return {}
        held = self._load(shard, digest, keys)
        self._cache[shard] = held
        while len(self._cache) > _CACHED_SHARDS:
            self._cache.popitem(last=False)
        return held

    def _load(self, shard: int, digest: Any, keys: Sequence[str] | None
              ) -> dict[str, dict[str, Any]]:
        where = f"{self.url}: shard {shard}: metadata object"
        blob = run(self._loc.get(meta_key(shard)))
        if blob is None:
            raise CorruptArchiveError(f"{where} is missing (its manifest entry names one)")
        if len(blob) > self._max_bytes:
            raise CorruptArchiveError(f"{where} is {len(blob)} bytes, over {self._max_bytes}")
        if meta_digest(blob) != digest:
            raise CorruptArchiveError(f"{where} does not match its manifest digest")
        try:
            obj = json.loads(blob)
            held = obj["records"] if isinstance(obj, dict) and obj.get("shard") == shard else None
        except ValueError:
            held = None
        if not isinstance(held, dict) or not all(isinstance(m, dict) for m in held.values()):
            raise CorruptArchiveError(f"{where} is not what a writer writes")
        for k, m in held.items():
            try:
                check_record_meta(m, f"{where}: record {k!r}")
            except (TypeError, ValueError) as e:
                raise CorruptArchiveError(str(e)) from None
        if keys is not None and not set(held) <= set(keys):
            raise CorruptArchiveError(f"{where} names keys the shard does not hold")
        return held
