"""Which archived photos were edited at their source since they were archived.

A rerun of ``cdc archive`` plans only keys the archive lacks, so a photo that was cropped or
retouched after archiving kept its old version silently. The archive stores each local
source file's modification time (``FileModified``, whole seconds, UTC: see
:mod:`pipeline.photo_metadata`); a source whose time now differs has changed. The job
reports those, and with ``--update`` removes their records (:meth:`storage.Archive.remove`)
so they are encoded again. Records without a stored time (archived with ``--metadata none``,
from an object store, or before 2026-12-07) are not judged.

A time can change while the bytes do not: a copy that did not keep times, a ``touch``, a
memory card read under Windows an hour off after a daylight-saving change. Where the record
also stores its source's digest (``SourceSHA256``, since 2026-12-08), a source whose time
differs is read and hashed, and counts as changed only if its bytes differ too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.archive.planning import InputItem
from pipeline.files import InputError, read_bytes
from pipeline.photo_metadata import (
    SOURCE_SHA256,
    digest_of,
    file_modified,
    file_time,
    source_digest,
)
from storage import ArchiveError

#: Times this close count as the same (FAT and exFAT memory cards store them to 2 s; the
#: stored time is whole seconds): what rsync's ``--modify-window`` is for.
MODIFY_WINDOW_S = 2


def changed_sources(arch: Any, items: Iterable[InputItem], done: set[str]) -> list[str]:
    """Keys of ``done`` (archived) whose local source file's modification time differs from
    the one stored with the record by more than :data:`MODIFY_WINDOW_S` and, where the
    record stores its source's digest, whose bytes differ too; sorted. Costs a ``stat`` per
    archived source, one read of each shard's metadata object, shard by shard (each read
    once), and a read of each source whose time differs and whose digest is stored."""
    urls = {it.key: it.url for it in items if it.key in done}
    if not urls:
        return []
    order = sorted((info.shard, info.key) for info in arch.infos() if info.key in urls)
    out = []
    for _, key in order:
        try:
            meta = arch.metadata(key)
        except ArchiveError:
            continue  # damaged metadata: `cdc verify` reports it; the record is not judged
        stored = file_time(meta)
        if stored is None:
            continue
        now = file_time(file_modified(urls[key]))
        if now is not None and abs(now - stored) > MODIFY_WINDOW_S \
                and not _same_bytes(urls[key], digest_of(meta)):
            out.append(key)
    return sorted(out)


def _same_bytes(url: str, digest: str | None) -> bool:
    """Whether the source still has the bytes archived (False when no digest is stored, or
    the file cannot be read now: then its time decides)."""
    if digest is None:
        return False
    try:
        return source_digest(read_bytes(url))[SOURCE_SHA256] == digest
    except InputError:
        return False
