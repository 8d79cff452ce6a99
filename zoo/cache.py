"""The local model cache: where non-shipped weights files were seen, found again by digest.

Every stream names its model by the first 8 bytes of the weights' sha256. A shipped model
is found from that in ``zoo/models.json``; any other model the CLI has loaded once (``-m
PATH`` or ``-m URL``) is remembered here, so later commands that read its streams need no
``-m``. The cache holds *references*, not copies: one small file per model,
``<cache>/<sha256>.source``, holding the path (absolute) or URL it was loaded from. A moved
or changed file is simply not found (loading checks the full sha256, so a different file at
the same place is refused, never used).

The folder is ``$CDC_MODEL_CACHE``, else ``$XDG_CACHE_HOME/cdc-toolkit/models``, else
``~/.cache/cdc-toolkit/models``. Writing is best effort: a read-only home only means no
cache. No torch here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def cache_dir() -> Path:
    if os.environ.get("CDC_MODEL_CACHE"):
        return Path(os.environ["CDC_MODEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cdc-toolkit" / "models"


def remember(sha256: str, source: str) -> Path | None:
    """Record that the weights with ``sha256`` were loaded from ``source`` (a path or URL)."""
    sha = sha256.lower().removeprefix("sha256:")
    if not _SHA256.match(sha):
        return None
    if "://" not in source:
        source = str(Path(source).resolve())
    path = cache_dir() / f"{sha}.source"
    try:
        if path.is_file() and path.read_text().strip() == source:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(source + "\n")
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def lookup(digest_prefix: str) -> tuple[str, str] | None:
    """``(source, full sha256)`` of a remembered model whose sha256 starts with
    ``digest_prefix`` (hex) and whose file still exists, or None."""
    prefix = digest_prefix.lower().removeprefix("sha256:")
    if not prefix or not re.fullmatch(r"[0-9a-f]+", prefix):
        return None
    try:
        entries = sorted(cache_dir().glob(f"{prefix}*.source"))
    except OSError:
        return None
    for entry in entries:
        sha = entry.name.removesuffix(".source")
        try:
            source = entry.read_text().strip()
        except OSError:
            continue
        if _SHA256.match(sha) and source and ("://" in source or Path(source).is_file()):
            return source, sha
    return None


def find_model(digest_prefix: str, codec: str | None = None) -> tuple[str, str] | None:
    """The model a stream names by its digest: ``(name or source, full sha256)`` of the
    shipped model with that digest (of codec ``codec`` when given), else of one in the
    local cache, else None."""
    from cdc.registry import codec_of
    from zoo.store import registry

    prefix = digest_prefix.lower().removeprefix("sha256:")
    if not prefix:
        return None
    for name, e in registry().items():
        sha = str(e.get("sha256", ""))
        if sha.startswith(prefix) and (codec is None or codec_of(e) == codec):
            return name, sha
    return lookup(prefix)


__all__ = ["cache_dir", "find_model", "lookup", "remember"]
