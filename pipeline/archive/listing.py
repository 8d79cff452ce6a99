"""What an archive holds, as listings show it: records with their size, bytes, bpp and
capture date, filtered by capture date, ordered, and totalled per collection or folder.
Metadata only (no payload): ``cdc ls``, ``cdc export --taken-from`` and the HTTP listing
(``/images?taken_from=``) all read through here."""

from __future__ import annotations

import re
from typing import Any

from pipeline.photo_metadata import digest_of, taken
from storage import ArchiveError

#: A ``--taken-from/--taken-to`` date (also the HTTP listing's ``taken_from/taken_to``).
DATE_PATTERN = re.compile(r"\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?")
SORTS = ("key", "taken", "bytes", "bpp")


def date_problem(name: str, date: str | None) -> str | None:
    """Why ``date`` is not a YYYY, YYYY-MM or YYYY-MM-DD (None: it is, or is absent)."""
    if date is None or DATE_PATTERN.fullmatch(date):
        return None
    return f"{name} {date[:40]!r}: expected YYYY, YYYY-MM or YYYY-MM-DD"


def taken_of(arch: Any, key: str) -> str | None:
    """A record's capture date (never its position); None where it has none or its shard's
    metadata is damaged (`cdc verify` reports that; a listing goes on)."""
    try:
        return taken(arch.metadata(key))
    except ArchiveError:
        return None


def taken_between(items: list[dict[str, Any]], first: str | None, last: str | None
                  ) -> list[dict[str, Any]]:
    """The items whose capture date (the photo's local date) falls within ``first`` ..
    ``last``, both inclusive and as precise as given (``2021`` is the whole year)."""
    if first is None and last is None:
        return items
    return [it for it in items if taken_in(it.get("taken"), first, last)]


def taken_in(when: str | None, first: str | None, last: str | None) -> bool:
    """Whether a capture date (ISO 8601, the photo's local time) is within ``first`` ..
    ``last`` (YYYY[-MM[-DD]], inclusive, either may be None); an undated photo is not."""
    return (when is not None and (first is None or when[:len(first)] >= first)
            and (last is None or when[:len(last)] <= last))


def order(items: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """``items`` (sorted by key) in the order ``--sort`` asks for; stable, so ties stay in
    key order."""
    if sort == "taken":
        return sorted(items, key=lambda it: (it.get("taken") is None, it.get("taken") or ""))
    if sort in ("bytes", "bpp"):
        return sorted(items, key=lambda it: -(it[sort] or 0) if it["ok"] else 1)
    return items


def folder_totals(items: list[dict[str, Any]], depth: int) -> list[dict[str, Any]]:
    """Per folder of the keys, ``depth`` levels deep (a key with fewer levels counts in its
    own folder, ``.`` at the top): images, failed, bytes, bpp; largest first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        parts = it["key"].split("/")[:-1]
        groups.setdefault("/".join(parts[:depth]) or ".", []).append(it)
    rows = [{"folder": f, **totals(g)} for f, g in groups.items()]
    return sorted(rows, key=lambda r: (-r["bytes"], r["folder"]))


def digest_of_record(arch: Any, key: str) -> str | None:
    """The digest of a record's source file (``SourceSHA256``), or None: archived before
    2026-12-08, or its shard's metadata is damaged."""
    try:
        return digest_of(arch.metadata(key))
    except ArchiveError:
        return None


def kept_first(keys: list[str]) -> list[str]:
    """Copies of one photo, the one to keep first: the fewest folder levels (a copy usually
    sits deeper, in a backup or export folder), then the shortest key, then key order."""
    return sorted(keys, key=lambda k: (k.count("/"), len(k), k))


def duplicate_groups(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The listed ok records whose source files had the same bytes, two or more a group:
    ``keys`` (the one to keep first, :func:`kept_first`), ``bytes`` (of all the copies),
    ``redundant_bytes`` (of all but the first); most redundant bytes first. Items need
    ``digest`` (:func:`list_items` with ``digests``)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        if it["ok"] and it.get("digest"):
            by.setdefault(it["digest"], []).append(it)
    groups = []
    for digest, its in by.items():
        if len(its) > 1:
            order = {k: i for i, k in enumerate(kept_first([it["key"] for it in its]))}
            its = sorted(its, key=lambda it: order[it["key"]])
            groups.append({"digest": digest, "keys": [it["key"] for it in its],
                           "bytes": sum(it["bytes"] for it in its),
                           "redundant_bytes": sum(it["bytes"] for it in its[1:])})
    return sorted(groups, key=lambda g: (-g["redundant_bytes"], g["keys"][0]))


def list_items(arch: Any, *, prefix: str = "", match: str = "", failed_only: bool = False,
               details: bool = False, digests: bool = False) -> list[dict[str, Any]]:
    """The records to list, sorted by key: each ``key``, ``ok``, ``width``, ``height``,
    ``bytes``, ``bpp`` (over the original size), ``error`` when failed and, with ``details``,
    ``taken`` (the capture date; never the position) and, with ``digests``, ``digest`` (the
    source file's, where stored). Records are visited shard by shard, so each shard's
    metadata is read once."""
    needle = match.casefold()
    out = []
    for info in arch.infos():
        if (not info.key.startswith(prefix) or needle not in info.key.casefold()
                or (failed_only and info.ok)):
            continue
        pixels = info.width * info.height
        item: dict[str, Any] = {"key": info.key, "ok": info.ok, "width": info.width,
                                "height": info.height, "bytes": info.nbytes,
                                "bpp": round(8 * info.nbytes / pixels, 4) if pixels else None}
        if not info.ok:
            item["error"] = info.error
        if details and (when := taken_of(arch, info.key)):
            item["taken"] = when
        if digests and info.ok and (digest := digest_of_record(arch, info.key)):
            item["digest"] = digest
        out.append(item)
    out.sort(key=lambda it: it["key"])
    return out


def archive_header(arch: Any) -> dict[str, Any]:
    return {"archive": arch.url, "codec": arch.codec_id, "model": arch.model_id,
            "tiers": sorted(arch.tiers)}


def totals(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and bytes of the listed images; ``bpp``: their bytes over their pixels (the
    collection's rate, not a mean of per-image rates)."""
    ok = [it for it in items if it["ok"]]
    nbytes = sum(it["bytes"] for it in ok)
    pixels = sum(it["width"] * it["height"] for it in ok)
    return {"images": len(items), "failed": len(items) - len(ok), "bytes": nbytes,
            "bpp": round(8 * nbytes / pixels, 4) if pixels else None}


class TakenDates:
    """key -> capture date of an archive's dated photos, read once (one metadata read a
    shard) and again only when the archive's record count changes: the HTTP listing's
    date filter."""

    def __init__(self) -> None:
        self._held: tuple[int, dict[str, str]] | None = None

    def keys_between(self, arch: Any, keys: list[str], first: str | None, last: str | None
                     ) -> list[str]:
        """``keys`` (in their order) of the photos taken within ``first`` .. ``last``."""
        n = len(arch)
        if self._held is None or self._held[0] != n:
            self._held = (n, {it["key"]: it["taken"] for it in list_items(arch, details=True)
                              if "taken" in it})
        dates = self._held[1]
        return [k for k in keys if taken_in(dates.get(k), first, last)]
