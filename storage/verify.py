"""Whole-archive verification: every shard's digests, keys, record metadata and record CRCs,
duplicates.

Behind ``Archive.verify``, the repair path's first step: it reads everything, reports every
problem at once instead of stopping at the first, and forgets what it cached about the
corrupt shards.
"""

from __future__ import annotations

from .errors import CorruptArchiveError, DuplicateKeyError
from .keys import key_problems
from .parts import ArchiveParts
from .table_check import check_table


def verify_parts(parts: ArchiveParts, *, data: bool = True) -> None:
    """Raise one :class:`CorruptArchiveError` listing every corrupt shard (metadata digest
    and, with ``data``, every record's CRC) and every key-table problem, then
    :class:`DuplicateKeyError` for keys stored in more than one shard."""
    url = parts.ledger.url
    problems: list[str] = []
    completed = parts.ledger.completed_shards()
    for s in completed:
        try:
            meta = parts.index.meta(s)
            problems += key_problems(meta.keys, f"{url}: shard {s}")
            parts.meta.forget(s)
            parts.meta.shard(s, lambda m=meta.manifest: m, meta.keys)
            if data:
                for _ in parts.payload.shard_records(meta):
                    pass
        except CorruptArchiveError as e:
            problems.append(str(e))
            parts.index.forget(s)
    problems += check_table(parts.index, parts.payload, completed)
    if problems:
        raise CorruptArchiveError(f"{url}: {len(problems)} problem(s):\n" + "\n".join(problems))
    parts.index.refresh()
    if dups := parts.index.duplicates():
        first = ", ".join(f"{k!r} in {v}" for k, v in list(dups.items())[:5])
        raise DuplicateKeyError(f"{url}: {len(dups)} key(s) stored in more than one shard: {first}")
