"""``cdc ls`` and ``cdc rm``: what an archive holds, and removing photos from it, without
decoding anything (no torch, no Ray).

``ls``: a collection of thousands of photos was archived; before ``cdc get`` or ``cdc export`` the
owner needs its keys, and to know which photos failed (and why), how many bytes each took
and when it was taken. This reads the manifests, the key table and the per-shard capture
metadata only. ``rm``: a photo archived by mistake, or one its owner wants gone, leaves the
archive for good (:mod:`storage.removal`: its shard is replaced by a copy without it, its
bytes, key and cached decodes deleted). Keys and archive-supplied text are printed escaped
(:func:`jobs.text.printable`): an archive can be hostile.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from jobs.text import fail as _fail
from jobs.text import printable

EXIT_INPUT, EXIT_USAGE = 1, 2


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    app.command("rm")(rm)


def _archive_error(archive_url: str, e: Exception) -> NoReturn:
    text = str(e) if str(e).startswith(archive_url) else f"{archive_url}: {e}"
    _fail(text, EXIT_INPUT, archive_url)


def read_key_list(path: Path) -> list[str]:
    """Keys from a file, one a line (blank lines and ``#`` comments skipped), or from
    standard input for ``-`` (``cdc ls URL --duplicates | cdc rm URL --keys -``); an
    unreadable file is one ``error:`` line naming it, exit 1."""
    try:
        text = (sys.stdin.buffer.read().decode("utf-8") if str(path) == "-"
                else path.read_text(encoding="utf-8"))
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    except (OSError, ValueError) as e:  # ValueError: not UTF-8 text
        _fail(f"{path}: cannot read ({e})", EXIT_INPUT, path)


def ls(
    archive_url: Annotated[str, typer.Argument(help="Archive path or fsspec URL.")],
    prefix: Annotated[str, typer.Option(help="Only keys starting with this.")] = "",
    match: Annotated[str, typer.Option(
        help="Only keys containing this (case-insensitive).")] = "",
    failed: Annotated[bool, typer.Option(
        "--failed", help="Only the images the archive job could not code, with why.")] = False,
    long: Annotated[bool, typer.Option(
        "--long", "-l", help="Status, size, bytes, bpp and capture date of each image, "
                             "and a total.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="The archive's model and totals, and every listed image.")] = False,
    taken_from: Annotated[str | None, typer.Option(
        help="Only photos taken on or after this date: YYYY, YYYY-MM or YYYY-MM-DD "
             "(photos without a capture date are left out).")] = None,
    taken_to: Annotated[str | None, typer.Option(
        help="Only photos taken on or before this date (YYYY, YYYY-MM or YYYY-MM-DD).")] = None,
    sort: Annotated[str, typer.Option(
        help="Order: key, taken (undated last), bytes or bpp (largest first).")] = "key",
    du: Annotated[int | None, typer.Option(
        "--du", min=1, max=32, help="Totals per folder of the keys, N levels deep (like du): "
                                    "images, failed, bytes, bpp; largest first.")] = None,
    duplicates: Annotated[bool, typer.Option(
        "--duplicates", help="Images whose source files had the same bytes: the redundant "
                             "copies' keys (all but the one kept of each group: the fewest "
                             "folder levels, then the shortest key), a list `cdc rm --keys` "
                             "takes; -l: the groups and the bytes they hold.")] = False,
) -> None:
    """List an archive's images (keys; -l: size, bytes, bpp, capture date); reads no payload."""
    from pipeline.archive.listing import (
        SORTS,
        archive_header,
        list_items,
        order,
        taken_between,
        totals,
    )
    from storage import Archive, ArchiveError

    check_dates(taken_from, taken_to)
    if sort not in SORTS:
        _fail(f"--sort {sort!r}: expected one of {', '.join(SORTS)}", EXIT_USAGE)
    if duplicates and (du is not None or failed):
        _fail("--duplicates lists ok images by group: not with --du or --failed", EXIT_USAGE)
    dated = taken_from is not None or taken_to is not None or sort == "taken"
    try:
        arch = Archive.open(archive_url, read_only=True)
        items = list_items(arch, prefix=prefix, match=match, failed_only=failed,
                           details=long or as_json or dated, digests=duplicates)
    except (ArchiveError, OSError) as e:
        _archive_error(archive_url, e)
    items = order(taken_between(items, taken_from, taken_to), sort)
    if duplicates:
        _list_duplicates(arch, items, long, as_json)
        return
    if du is not None:
        _list_folders(arch, items, du, as_json)
        return
    if as_json:
        typer.echo(json.dumps({**archive_header(arch), **totals(items), "items": items},
                              indent=2))
    elif long:
        for line in long_lines(items):
            typer.echo(line)
    else:
        for it in items:
            typer.echo(printable(it["key"]) + (f"  ({printable(it['error'])})"
                                               if failed and "error" in it else ""))


def _list_folders(arch, items: list[dict], depth: int, as_json: bool) -> None:
    """``cdc ls --du N``: bytes, images, failed and bpp per folder, and the total."""
    from pipeline.archive.listing import archive_header, folder_totals, totals

    rows = folder_totals(items, depth)
    if as_json:
        typer.echo(json.dumps({**archive_header(arch), **totals(items), "folders": rows},
                              indent=2))
        return
    for r in rows:
        bpp = f"{r['bpp']:.3f}" if r["bpp"] is not None else "-"
        typer.echo(f"{r['bytes']:>13,}  {r['images']:>8,}  {r['failed']:>6,}  "
                   f"{bpp:>6}  {printable(r['folder'])}")
    t = totals(items)
    typer.echo(f"{t['bytes']:>13,}  {t['images']:>8,}  {t['failed']:>6,}  "
               f"{t['bpp'] if t['bpp'] is None else format(t['bpp'], '.3f'):>6}  (total)")


def _list_duplicates(arch, items: list[dict], long: bool, as_json: bool) -> None:
    """``cdc ls --duplicates``: the redundant copies' keys, or (-l) the groups, or JSON."""
    from pipeline.archive.listing import archive_header, duplicate_groups

    groups = duplicate_groups(items)
    total = {"groups": len(groups), "redundant_images": sum(len(g["keys"]) - 1 for g in groups),
             "redundant_bytes": sum(g["redundant_bytes"] for g in groups),
             "undigested": sum(1 for it in items if it["ok"] and "digest" not in it)}
    if as_json:
        typer.echo(json.dumps({**archive_header(arch), **total, "duplicates": groups},
                              indent=2))
        return
    if not long:
        for g in groups:
            for k in g["keys"][1:]:
                typer.echo(printable(k))
        return
    for g in groups:
        typer.echo(f"{g['redundant_bytes']:>13,}  {len(g['keys'])} copies  "
                   + ", ".join(printable(k) for k in g["keys"]))
    typer.echo(f"{total['redundant_images']:,} redundant copies in {total['groups']:,} "
               f"groups, {total['redundant_bytes']:,} bytes"
               + (f" ({total['undigested']:,} image(s) archived before 2026-12-08 have no "
                  "digest and are not compared)" if total["undigested"] else ""))


def check_dates(taken_from: str | None, taken_to: str | None) -> None:
    """``--taken-from``/``--taken-to`` as YYYY, YYYY-MM or YYYY-MM-DD, else a usage error."""
    from pipeline.archive.listing import date_problem

    for opt, date in (("--taken-from", taken_from), ("--taken-to", taken_to)):
        if problem := date_problem(opt, date):
            _fail(problem, EXIT_USAGE)


def keys_taken_between(archive_url: str, taken_from: str | None, taken_to: str | None,
                       prefix: str = "") -> list[str]:
    """The keys of the photos taken in that range (for ``cdc export``); one ``error:`` line
    when the archive cannot be read."""
    from pipeline.archive.listing import list_items, taken_between
    from storage import Archive, ArchiveError

    check_dates(taken_from, taken_to)
    try:
        arch = Archive.open(archive_url, read_only=True)
        items = list_items(arch, prefix=prefix, details=True)
    except (ArchiveError, OSError) as e:
        _archive_error(archive_url, e)
    return [it["key"] for it in taken_between(items, taken_from, taken_to)]


def archive_info(archive_url: str, as_json: bool) -> None:
    """`cdc info ARCHIVE`: the archive's model, tiers, creation and totals (manifests only:
    no key listing, no payload)."""
    from pipeline.archive.listing import archive_header
    from storage import Archive, ArchiveError

    try:
        arch = Archive.open(archive_url, read_only=True)
        summary = arch.summary()
        shards = arch.completed_shards()
        created, tiers = arch.created, arch.tiers  # their shape checked at open
        layout = arch.attrs.get("layout", {})
        pending = len(arch.pending_removals())
    except (ArchiveError, OSError) as e:
        _archive_error(archive_url, e)
    d = {**archive_header(arch), "weights_digest": arch.weights_digest,
         "format_version": arch.format_version, "created": created,
         "tier_settings": tiers, "shards": len(shards),
         "shard_size": layout.get("shard_size"), "records": summary["records"],
         "ok": summary["ok"], "failed": summary["failed"], "bytes": summary.get("bytes"),
         "interrupted_removals": pending}
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    made = " ".join(str(created[k]) for k in ("at", "by") if k in created)
    extra = ", ".join(f"{k} {created[k]}" for k in ("source", "rate_bpp", "psnr_db")
                      if k in created)
    rows = [
        ("archive", printable(archive_url)),
        ("codec", printable(arch.codec_id)),
        ("model", f"{printable(arch.model_id)} ({printable(arch.weights_digest)[:19]})"),
        ("created", printable(made + (f" ({extra})" if extra else ""))),
        ("tiers", "; ".join(f"{printable(n)} " + ", ".join(
            f"{printable(k)} {printable(v)}" for k, v in sorted(t.items()))
            for n, t in sorted(tiers.items())) or "-"),
        ("shards", f"{len(shards):,} completed (shard size {layout.get('shard_size')})"),
        ("images", f"{summary['records']:,} ({summary['failed']:,} failed)"),
    ]
    if summary.get("bytes") is not None:
        rows.append(("bytes", f"{summary['bytes']:,} of bitstreams"))
    if pending:
        rows.append(("removals", f"{pending} interrupted (`cdc rm` or `cdc archive` finishes "
                                 "it)"))
    for k, v in rows:
        typer.echo(f"{k:>15}: {v}")


def long_lines(items: list[dict[str, Any]]) -> list[str]:
    """``ls -l``-style rows (status, size, bytes, bpp, capture date, key: the key last, as it
    may hold spaces), a failed image's reason on the next line, then the total."""
    from pipeline.archive.listing import totals

    lines = []
    for it in items:
        size = f"{it['width']}x{it['height']}" if it["width"] else "-"
        bpp = f"{it['bpp']:.3f}" if it["ok"] and it["bpp"] is not None else "-"
        nbytes = f"{it['bytes']:,}" if it["ok"] else "-"
        lines.append(f"{'ok' if it['ok'] else 'failed':<6}  {size:>11}  {nbytes:>11}  "
                     f"{bpp:>6}  {it.get('taken', '-'):<25}  {printable(it['key'])}")
        if "error" in it:
            lines.append(f"        {printable(it['error'])}")
    t = totals(items)
    rate = f", {t['bpp']:.3f} bpp" if t["bpp"] is not None else ""
    lines.append(f"{t['images']:,} images ({t['failed']:,} failed), "
                 f"{t['bytes']:,} bytes{rate}")
    return lines


def rm(
    archive_url: Annotated[str, typer.Argument(help="Archive path or fsspec URL.")],
    keys: Annotated[list[str] | None, typer.Argument(help="Keys of the images to remove.")]
    = None,
    keys_file: Annotated[Path | None, typer.Option(
        "--keys", help="File listing keys to remove, one a line (- reads them from "
                        "standard input).")] = None,
    prefix: Annotated[str | None, typer.Option(
        help="Remove every key starting with this (not empty).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what would be removed; change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Remove images from an archive for good: their bytes, keys and cached decodes."""
    from storage import Archive, ArchiveError

    wanted = list(keys or [])
    if keys_file is not None:
        wanted += read_key_list(keys_file)
    if not wanted and not prefix:
        _fail("name the images to remove (keys, --keys FILE or a non-empty --prefix)",
              EXIT_USAGE)
    try:
        arch = Archive.open(archive_url, read_only=dry_run)
        if prefix:
            matched = [k for k in arch.keys() if k.startswith(prefix)]
            if not matched:
                _fail(f"{archive_url}: no record starts with {prefix!r}; nothing was removed",
                      EXIT_INPUT, archive_url)
            wanted += matched
        wanted = sorted(set(wanted))
        if dry_run:
            missing = [k for k in wanted if k not in arch]
            if missing:
                _fail(f"{archive_url}: no record {missing[0]!r}", EXIT_INPUT, archive_url)
            report = {"removed": 0, "would_remove": len(wanted), "keys": wanted}
        else:
            report = {**arch.remove(wanted, owner="cdc rm"), "keys": wanted}
    except (ArchiveError, OSError) as e:
        _archive_error(archive_url, e)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    n = len(wanted)
    noun = "image" if n == 1 else "images"
    if dry_run:
        for k in wanted:
            typer.echo(printable(k))
        typer.echo(f"would remove {n:,} {noun} (--dry-run: nothing changed)")
    else:
        typer.echo(f"removed {n:,} {noun}: {report['bytes_freed']:,} bytes of bitstreams, "
                   f"{report['shards_replaced']} shard(s) rewritten without them, "
                   f"{report['cached_deleted']} cached decode(s) deleted")
