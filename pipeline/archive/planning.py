"""Input planning: image files -> keyed items -> shards of work.

:func:`plan_inputs` lists the sources and gives every file a key (its path relative to the
source root, e.g. ``holiday/beach.png``), refusing duplicate and malformed keys.
:func:`plan_shards` drops keys already in the archive and cuts the rest into shards of
``shard_size`` consecutive keys, numbered with free shard numbers. Both are deterministic,
so a rerun after a crash plans the same work for what is left.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.sources import list_images
from storage import key_problem

DEFAULT_SHARD_SIZE = 64


@dataclass(frozen=True)
class InputItem:
    """One image to archive: its archive key and where to read it."""

    key: str
    url: str


def _strip_protocol(p: str) -> str:
    return p.split("://", 1)[1] if "://" in p else p


def _source_root(src: str, files: Sequence[str]) -> str:
    """The folder keys are made relative to (protocol stripped)."""
    import fsspec

    s = os.fspath(src)
    if any(c in s for c in "*?["):
        head = s
        for i, c in enumerate(s):
            if c in "*?[":
                head = s[:i]
                break
        head = head.rsplit("/", 1)[0] if "/" in head else "."
        _, path = fsspec.core.url_to_fs(head)
        return _strip_protocol(path)
    fs, path = fsspec.core.url_to_fs(s)
    if not s.lower().endswith((".txt", ".lst")) and fs.isdir(path):
        return _strip_protocol(path)
    dirs = [posixpath.dirname(_strip_protocol(f)) for f in files]
    try:
        return posixpath.commonpath(dirs) if dirs else ""
    except ValueError:  # mixed absolute/relative entries
        return ""


def plan_inputs(src: str, others: Counter | None = None
                ) -> tuple[list[InputItem], list[dict[str, str]]]:
    """List ``src`` (folder, glob, fsspec URL or .txt/.lst list file) into keyed items.

    Returns ``(items sorted by key, problems)``; a problem is ``{"url", "error"}`` for a
    file whose key would be malformed or clashes with another file's key (such files
    cannot be stored, so they are reported instead). Raises FileNotFoundError when the
    source matches nothing. ``others`` counts the files that are not images (by extension).
    """
    files = list_images(src, others)
    root = _source_root(src, files)
    items: dict[str, InputItem] = {}
    problems: list[dict[str, str]] = []
    for f in files:
        p = _strip_protocol(f)
        key = posixpath.relpath(p, root) if root else p.lstrip("/")
        if (why := key_problem(key)) is not None:
            problems.append({"url": f, "key": key, "error": f"cannot be archived: {why}"})
            continue
        if key in items:
            problems.append({"url": f, "key": key,
                             "error": f"same key as {items[key].url}; archive them separately"})
            continue
        items[key] = InputItem(key, f)
    return sorted(items.values(), key=lambda it: it.key), problems


@dataclass(frozen=True)
class ShardPlan:
    """One unit of work: shard number + its items (in key order)."""

    shard: int
    items: tuple[InputItem, ...]
    takeover: bool = False

    @property
    def keys(self) -> list[str]:
        return [it.key for it in self.items]


def free_shard_numbers(completed: set[int], n: int) -> list[int]:
    """The ``n`` smallest shard numbers not completed (gaps left by crashes come first)."""
    out, k = [], 0
    while len(out) < n:
        if k not in completed:
            out.append(k)
        k += 1
    return out


def plan_shards(items: Sequence[InputItem], done_keys: set[str], completed: set[int],
                shard_size: int, stale_claims: set[int] = frozenset()) -> list[ShardPlan]:
    """Cut the items not yet archived into shards of ``shard_size`` consecutive keys.

    Deterministic for a given (items, archive state), so a rerun after a crash plans the
    same work for what is left. Shards with a stale claim (a dead writer's) are re-used
    with ``takeover``.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    todo = [it for it in items if it.key not in done_keys]
    chunks = [tuple(todo[i:i + shard_size]) for i in range(0, len(todo), shard_size)]
    numbers = free_shard_numbers(completed, len(chunks))
    return [ShardPlan(k, c, takeover=k in stale_claims) for k, c in zip(numbers, chunks)]
