"""A whole-archive check with a breakdown, for ``cdc verify`` and for job logs.

:meth:`Archive.verify` is the authority: it reads every completed shard (manifest digests,
and with ``data`` every record's CRC) and raises one error listing the problems.
:func:`check_archive` runs it, and also checks the stored keys (:func:`storage.keys.bad_keys`)
and duplicates itself. Only when ``verify`` fails does it look closer, shard by shard and
then record by record in a shard whose payload fails, to say how many payloads, manifests
and keys are bad and which. A clean archive costs one ``verify`` pass.
"""

from __future__ import annotations

from typing import Any

from .archive import Archive
from .errors import ArchiveError, CorruptArchiveError, DuplicateKeyError
from .keys import bad_keys, key_problem


def _problem_lines(e: Exception) -> list[str]:
    lines = str(e).splitlines()
    return [ln for ln in lines[1:] if ln.strip()] if len(lines) > 1 else [str(e)]


def check_archive(arch: Archive, *, data: bool = True) -> dict[str, Any]:
    """Check ``arch``; return a report (never raises for what it finds).

    Keys of the report: ``url``, ``shards`` (completed), ``records``, ``ok``, ``failed``
    (records stored as failed images: not a problem of the archive), ``bad_payloads``
    (``{"shard", "key", "error"}``, key None when a whole payload object is unreadable),
    ``bad_manifests`` (``{"shard", "error"}``: manifest or record metadata that does not
    match its digest), ``bad_keys`` (``{"shard", "key", "error"}``), ``duplicate_keys``
    (``{"key", "shards"}``), ``other`` (problems ``verify`` reported that fit none of
    these), ``data`` (whether payloads were read) and ``clean``.
    """
    problems: list[str] = []
    try:
        arch.verify(data=data)
    except (CorruptArchiveError, DuplicateKeyError) as e:
        problems = _problem_lines(e)
    shards = arch.completed_shards()
    report: dict[str, Any] = {
        "url": arch.url, "shards": len(shards), "records": 0, "ok": 0, "failed": 0,
        "bad_payloads": [], "bad_manifests": [], "bad_keys": [], "duplicate_keys": [],
        "other": [], "data": data,
    }
    where: dict[str, list[int]] = {}
    for s in shards:
        try:
            infos = list(arch.infos([s]))
        except CorruptArchiveError as e:
            report["bad_manifests"].append({"shard": s, "error": str(e)})
            continue
        report["records"] += len(infos)
        report["ok"] += sum(i.ok for i in infos)
        report["failed"] += sum(not i.ok for i in infos)
        for key, why in bad_keys(i.key for i in infos):
            report["bad_keys"].append({"shard": s, "key": key, "error": why})
        for i in infos:
            where.setdefault(i.key, []).append(s)
        if data and problems:
            report["bad_payloads"] += _bad_payloads(arch, s, infos)
    report["duplicate_keys"] = [{"key": k, "shards": sorted(set(v))}
                                for k, v in where.items() if len(v) > 1]
    found = any(report[k] for k in ("bad_payloads", "bad_manifests", "bad_keys",
                                    "duplicate_keys"))
    if problems and not found:
        report["other"] = problems
    try:
        pending = arch.pending_removals()
    except CorruptArchiveError as e:
        pending, report["other"] = [], [*report["other"], str(e)]
    report["other"] += [
        f"{arch.url}: the removal of records from shard {p['shard']} was interrupted (kept "
        "records may be stored twice); `cdc rm` or `cdc archive` on this archive finishes it"
        for p in pending]
    report["clean"] = not found and not report["other"] and not problems
    return report


def _bad_payloads(arch: Archive, shard: int, infos: list) -> list[dict[str, Any]]:
    """The records of ``shard`` whose payload cannot be read or fails its CRC."""
    try:
        for _ in arch.records([shard]):
            pass
        return []
    except CorruptArchiveError as e:
        shard_error = str(e)
    out: list[dict[str, Any]] = []
    for i in infos:
        if key_problem(i.key) is not None:
            continue  # cannot be looked up by key; reported as a bad key
        try:
            arch[i.key]
        except CorruptArchiveError as e:
            out.append({"shard": shard, "key": i.key, "error": str(e)})
        except ArchiveError:
            continue  # e.g. the key is also in another shard: reported as a duplicate
    return out or [{"shard": shard, "key": None, "error": shard_error}]


__all__ = ["check_archive"]
