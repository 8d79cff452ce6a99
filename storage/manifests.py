"""Which shards are complete and which are being written: manifest entries and claims.

``manifest/<k>.json`` says "shard k is complete" (readers see nothing else);
``claims/<k>.json`` says "a writer is on shard k". Both are small objects of their own,
created exclusively, so concurrent writers never race on a shared document. The write
protocol that uses them is in :mod:`storage.writer`.
"""

from __future__ import annotations

import json
from typing import Any

from .backend import Location, run
from .errors import CorruptArchiveError
from .layout import CLAIMS_DIR, MANIFEST_DIR, claim_key, manifest_key, shard_from_name


def _shards_named(names: list[str]) -> set[int]:
    return {s for s in map(shard_from_name, names) if s is not None}


class ShardLedger:
    """Manifest entries and claims of one archive."""

    def __init__(self, loc: Location, shard_size: int) -> None:
        self._loc = loc
        self.url = loc.url
        self.shard_size = shard_size

    # -- manifests ------------------------------------------------------------------------
    def completed_shards(self) -> list[int]:
        """Shards with a manifest entry (one listing request), ascending."""
        return sorted(_shards_named(run(self._loc.list(MANIFEST_DIR + "/"))))

    def is_complete(self, shard: int) -> bool:
        return run(self._loc.get(manifest_key(shard))) is not None

    def manifest(self, shard: int) -> dict[str, Any] | None:
        """The manifest entry of a completed shard, or None."""
        return run(self.fetch_manifest(shard))

    async def fetch_manifest(self, shard: int) -> dict[str, Any] | None:
        raw = await self._loc.get(manifest_key(shard))
        return None if raw is None else self._parse(shard, raw)

    def _parse(self, shard: int, raw: bytes) -> dict[str, Any]:
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

    def require_manifest(self, shard: int) -> dict[str, Any]:
        """The manifest entry of a shard known to be complete."""
        m = self.manifest(shard)
        if m is None:
            raise CorruptArchiveError(f"{self.url}: shard {shard}: manifest entry vanished")
        return m

    def create_manifest(self, shard: int, entry: dict[str, Any]) -> bool:
        """Mark a shard complete; False when an entry exists already (exclusive create)."""
        return run(self._loc.create(manifest_key(shard), json.dumps(entry).encode()))

    # -- claims ---------------------------------------------------------------------------
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

    def create_claim(self, shard: int, claim: dict[str, Any]) -> bool:
        """Claim a shard; False when someone holds a claim already (exclusive create)."""
        return run(self._loc.create(claim_key(shard), json.dumps(claim).encode()))

    def replace_claim(self, shard: int, claim: dict[str, Any]) -> None:
        """Overwrite whatever claim is there (a takeover)."""
        run(self._loc.set(claim_key(shard), json.dumps(claim).encode()))

    def drop_claim(self, shard: int) -> None:
        run(self._loc.delete(claim_key(shard)))

    # -- both -----------------------------------------------------------------------------
    def discard(self, shard: int) -> None:
        """Delete a shard's manifest entry and claim: it is no longer complete."""
        run(self._loc.delete(manifest_key(shard)))
        self.drop_claim(shard)

    def next_shard(self) -> int:
        """The first shard number after every completed or claimed shard (for appends)."""
        used = set(self.completed_shards())
        used.update(_shards_named(run(self._loc.list(CLAIMS_DIR + "/"))))
        return max(used) + 1 if used else 0

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
