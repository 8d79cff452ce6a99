"""Which archived photos were edited at their source since they were archived.

A rerun of ``cdc archive`` plans only keys the archive lacks, so a photo that was cropped or
retouched after archiving kept its old version silently. The archive stores each local
source file's modification time (``FileModified``, whole seconds, UTC: see
:mod:`pipeline.photo_metadata`); a source whose time now differs has changed. The job
reports those, and with ``--update`` removes their records (:meth:`storage.Archive.remove`)
so they are encoded again. Records without a stored time (archived with ``--metadata none``,
from an object store, or before 2026-12-07) are not judged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.archive.planning import InputItem
from pipeline.photo_metadata import file_modified, file_time
from storage import ArchiveError

#: Times this close count as the same (FAT and exFAT memory cards store them to 2 s; the
#: stored time is whole seconds): what rsync's ``--modify-window`` is for.
MODIFY_WINDOW_S = 2


def changed_sources(arch: Any, items: Iterable[InputItem], done: set[str]) -> list[str]:
    """Keys of ``done`` (archived) whose local source file's modification time differs from
    the one stored with the record by more than :data:`MODIFY_WINDOW_S`, sorted. Costs a
    ``stat`` per archived source and one read of each shard's metadata object, shard by
    shard (each read once)."""
    urls = {it.key: it.url for it in items if it.key in done}
    if not urls:
        return []
    order = sorted((info.shard, info.key) for info in arch.infos() if info.key in urls)
    out = []
    for _, key in order:
        try:
            stored = file_time(arch.metadata(key))
        except ArchiveError:
            continue  # damaged metadata: `cdc verify` reports it; the record is not judged
        if stored is None:
            continue
        now = file_time(file_modified(urls[key]))
        if now is not None and abs(now - stored) > MODIFY_WINDOW_S:
            out.append(key)
    return sorted(out)
