"""``cdc ls``: what an archive holds, without decoding anything.

A collection of thousands of photos was archived; before ``cdc get`` or ``cdc export`` the
owner needs its keys, and to know which photos failed (and why), how many bytes each took
and when it was taken. This reads the manifests, the key table and the per-shard capture
metadata only: no payload, no torch, no Ray. Keys and archive-supplied text are printed
escaped (:func:`jobs.text.printable`): an archive can be hostile.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from jobs.text import error_line, printable

EXIT_INPUT = 1


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)


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
) -> None:
    """List an archive's images (keys; -l: size, bytes, bpp, capture date); reads no payload."""
    from storage import Archive, ArchiveError

    try:
        arch = Archive.open(archive_url, read_only=True)
        items = list_items(arch, prefix=prefix, match=match, failed_only=failed,
                           details=long or as_json)
    except (ArchiveError, OSError) as e:
        text = str(e) if str(e).startswith(archive_url) else f"{archive_url}: {e}"
        typer.echo(f"error: {error_line(text, archive_url)}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
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


def list_items(arch: Any, *, prefix: str = "", match: str = "", failed_only: bool = False,
               details: bool = False) -> list[dict[str, Any]]:
    """The records to list, sorted by key: each ``key``, ``ok``, ``width``, ``height``,
    ``bytes``, ``bpp`` (over the original size), ``error`` when failed and, with ``details``,
    ``taken`` (the capture date; never the position). Records are visited shard by shard, so
    each shard's metadata is read once."""
    from pipeline.photo_metadata import taken
    from storage import ArchiveError

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
        if details:
            try:
                when = taken(arch.metadata(info.key))
            except ArchiveError:
                when = None  # damaged metadata: `cdc verify` reports it; the listing goes on
            if when:
                item["taken"] = when
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


def long_lines(items: list[dict[str, Any]]) -> list[str]:
    """``ls -l``-style rows (status, size, bytes, bpp, capture date, key: the key last, as it
    may hold spaces), a failed image's reason on the next line, then the total."""
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
