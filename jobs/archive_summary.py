"""The archive job's summary as the `cdc archive` table shows it (the JSON summary itself is
built by :func:`jobs.encode.run_archive_job`; docs/jobs.md lists its fields)."""

from __future__ import annotations

from typing import Any


def placement_text(ray_info: dict[str, Any]) -> str:
    """``placement`` for the summary table: devices per node (node ids shortened)."""
    return ", ".join(f"{p['node'][:8]} {p['device']}"
                     + (f" (Ray GPU {','.join(p['gpu_ids'])})" if p["gpu_ids"] else "")
                     for p in ray_info.get("placement", []))


def not_images_text(n: dict[str, Any], shown: int = 6) -> str:
    """``312 (.cr2 300, .mov 12)``: the files of the source that are not images."""
    ext = list(n["by_extension"].items())
    more = f", {len(ext) - shown} more kinds" if len(ext) > shown else ""
    return f"{n['files']} (" + ", ".join(f"{e} {c}" for e, c in ext[:shown]) + more + ")"


def same_bytes(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The images this run encoded whose source files had the same bytes as another of the
    run's: ``images`` (all but the first of each group), ``groups`` and an ``example`` group
    (the job encodes each; ``cdc ls --duplicates`` finds them across the whole archive)."""
    by: dict[str, list[str]] = {}
    for r in results:
        for key, digest in r.get("digests", {}).items():
            by.setdefault(digest, []).append(key)
    from pipeline.archive.listing import kept_first

    groups = sorted(kept_first(keys) for keys in by.values() if len(keys) > 1)
    return {"images": sum(len(g) - 1 for g in groups), "groups": len(groups),
            "example": groups[0] if groups else []}


def changed_text(c: dict[str, Any], would: bool = False) -> str:
    """``3 (2 re-encoded: --update)``; ``would``: for a dry run."""
    n = len(c["keys"])
    if c["updated"]:
        return f"{n} ({c['updated']} {'would be ' if would else ''}re-encoded: --update)"
    return f"{n} ({'would be ' if would else ''}kept as archived; --update re-encodes them)"


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    from jobs.progress import mb

    sh = s["shards"]
    rows = [
        ("archive", s["archive"] + (" (created)" if s["created"] else "")),
        ("model", f"{s['model']['id']} ({s['model']['weights_digest'][7:19]})"
                  + (f", --rate {s['rate']['target_bpp']:g} ({s['rate']['how']})"
                     if s.get("rate") else "")),
        ("ray", ", ".join(f"{k} {v}" for k, v in s["ray"].items()
                          if k not in ("cluster", "placement"))),
        *([("devices (node)", placement_text(s["ray"]))] if s["ray"].get("placement") else []),
        ("inputs", str(s["inputs"])),
        *([("not images (not archived)", not_images_text(s["not_images"]))]
          if s.get("not_images", {}).get("files") else []),
        ("already archived (skipped)", str(s["already_archived"])),
        *([("sources changed since archived", changed_text(s["changed_sources"]))]
          if s.get("changed_sources", {}).get("keys") else []),
        *([("failed images retried", f"{s['retry_failed']['images']} (removed from "
            f"{s['retry_failed']['shards_replaced']} shard(s), the rest kept)")]
                  + (f", --psnr {s['psnr']['target_db']:g}" if s.get("psnr") else "")
          if s.get("retry_failed", {}).get("images") else []),
        ("shards written / planned", f"{sh['written']} / {sh['planned']}"
         + (f" ({sh['retries']} retried)" if sh["retries"] else "")),
        ("images encoded (ok / failed)",
         f"{s['images']['encoded']} ({s['images']['ok']} / {s['images']['failed']})"),
        ("MB in / out", f"{mb(s['bytes_in'])} / {mb(s['bytes_out'])}"),
        ("bpp", f"{s['bpp']:.4f}"),
        *([("capture metadata kept", f"{s['metadata']['images']} images, "
            f"{s['metadata']['bytes']} bytes ({s['metadata']['policy']})")]
          if s.get("metadata") else []),
        *([("same bytes as another of this run", f"{s['same_bytes']['images']} images in "
            f"{s['same_bytes']['groups']} groups (cdc ls --duplicates)")]
          if s.get("same_bytes", {}).get("images") else []),
        ("time", f"{s['seconds']:.1f} s ({s['images_per_s']:.2f} images/s)"),
        ("archive now", (f"{s['archive_summary']['records']} records in "
                         f"{s['archive_summary']['completed_shards']} shards, "
                         f"{s['archive_summary']['failed']} failed")),
    ]
    if sh["failed"]:
        rows.append(("shards failed",
                     ", ".join(f"{f['shard']} ({f['error']})" for f in sh["failed"])))
    if s.get("notes"):
        rows.append(("notes (profile to sRGB, first frame, ...)", str(len(s["notes"]))))
    rows.append(("failures", str(len(s["failures"]))))
    return rows


def dry_run_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The table of ``cdc archive --dry-run``: what a run would do."""
    rows = [
        ("archive", s["archive"] + (" (would be created)" if s["created"] else "")),
        ("model", f"{s['model']['id']} ({s['model']['weights_digest'][7:19]})"),
        ("inputs", str(s["inputs"])),
        *([("not images (would not be archived)", not_images_text(s["not_images"]))]
          if s["not_images"]["files"] else []),
        ("already archived (would be skipped)", str(s["already_archived"])),
        *([("sources changed since archived", changed_text(s["changed_sources"], would=True))]
          if s["changed_sources"]["keys"] else []),
        *([("failed images to retry", f"{s['retry_failed']['images']} (in "
            f"{s['retry_failed']['shards_replaced']} shard(s))")]
          if s["retry_failed"]["images"] else []),
        ("images to encode", f"{s['images']['to_encode']} in {s['shards']['planned']} "
                             "shard(s)"),
        ("inputs that cannot be archived", str(len(s["failures"]))),
        ("written", "nothing (--dry-run)"),
    ]
    return rows


__all__ = ["changed_text", "dry_run_rows", "not_images_text", "placement_text", "summary_rows"]
