"""A local on-disk LRU of decoded images, shared by the processes of one machine.

Entries are keyed by :func:`decoded_key`: the record key, the SHA-256 of its bitstream,
the explicit decode settings and the model's weights digest. The bitstream hash makes the
key content-addressed: two archives that both hold ``cat.png`` never share an entry unless
they hold the same bytes, and a re-written record never serves a stale image. Values are
PNG bytes (lossless; other formats are re-encoded from them).

Writes are atomic (temp file + rename), hits refresh the entry's mtime, and a process
that pushes the total over ``max_bytes`` evicts least-recently-used entries down to 90%.
Several processes (Ray workers on one node, Serve replicas) may share a directory: every
operation tolerates entries vanishing under it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from cdc.interface import DecodeSettings
from pipeline.archive.tier_settings import settings_dict
from pipeline.files import write_bytes_atomic

DEFAULT_MAX_BYTES = 1 << 30
ENV_DIR = "CDC_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$CDC_CACHE_DIR``, else ``$XDG_CACHE_HOME/cdc-toolkit/decoded`` (``~/.cache``)."""
    if env := os.environ.get(ENV_DIR):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cdc-toolkit" / "decoded"


def decoded_key(key: str, bitstream_sha256: str, settings: DecodeSettings, model_digest: str,
                fmt: str = "png") -> str:
    """The cache key of one decoded image (hex SHA-256 of the canonical description)."""
    blob = json.dumps(
        {"key": key, "bitstream": bitstream_sha256, "settings": settings_dict(settings),
         "model": model_digest.lower().removeprefix("sha256:"), "format": fmt},
        sort_keys=True, separators=(",", ":"),
    ).encode()
    return hashlib.sha256(blob).hexdigest()


class DiskLRU:
    """``get(k) -> bytes | None``, ``put(k, data)``; ``k`` is a hex digest (see decoded_key)."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._total: int | None = None  # this process's estimate; rescanned when over budget
        self.hits = self.misses = self.evictions = 0

    def _path(self, k: str) -> Path:
        if len(k) < 8 or any(c not in "0123456789abcdef" for c in k):
            raise ValueError(f"cache keys are hex digests, got {k!r}")
        return self.root / k[:2] / k[2:]

    def get(self, k: str) -> bytes | None:
        if self.max_bytes == 0:
            return None
        p = self._path(k)
        try:
            data = p.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        try:
            os.utime(p)  # LRU order = mtime order
        except OSError:
            pass
        self.hits += 1
        return data

    def put(self, k: str, data: bytes) -> None:
        if self.max_bytes == 0 or len(data) > self.max_bytes:
            return
        p = self._path(k)
        write_bytes_atomic(p, data)
        with self._lock:
            if self._total is None:
                self._total = self._scan_total()
            else:
                self._total += len(data)
            if self._total > self.max_bytes:
                self._evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        if not self.root.is_dir():
            return out
        for sub in self.root.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sub.iterdir():
                if f.name.startswith("."):
                    continue
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime, st.st_size, f))
        return out

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _evict(self) -> None:
        entries = sorted(self._entries(), key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        target = int(self.max_bytes * 0.9)
        for _, size, f in entries:
            if total <= target:
                break
            try:
                f.unlink()
                self.evictions += 1
            except FileNotFoundError:
                pass
            total -= size
        self._total = total

    def size(self) -> int:
        return self._scan_total()

    def stats(self) -> dict[str, Any]:
        return {"dir": str(self.root), "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions}
