"""Resolve image sources (folders, globs, fsspec URLs, list files) to file URLs.

Shared by training (crops), archiving (one record per image) and evaluation.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Iterable

import fsspec

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm",
                    ".gif", ".avif", ".heic", ".heif", ".hif", ".jxl")


#: System files a folder walk meets that are nobody's photos (not counted as skipped).
_SYSTEM_FILES = {"thumbs.db", "desktop.ini"}


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _count_other(path: str, others: Counter | None) -> None:
    """Count a file a folder walk or glob left out, by extension (dotfiles and system
    files not counted): a RAW or a video in a photo folder is worth a line in the summary."""
    name = posixpath.basename(path)
    if others is None or name.startswith(".") or name.lower() in _SYSTEM_FILES:
        return
    others[posixpath.splitext(name)[1].lower() or "(no extension)"] += 1


def _with_protocol(fs: fsspec.AbstractFileSystem, path: str, original: str) -> str:
    if "://" in original:
        proto = original.split("://", 1)[0]
        return f"{proto}://{path}" if "://" not in path else path
    return path


def list_images(sources: str | Iterable[str], others: Counter | None = None) -> list[str]:
    """Expand sources into a sorted, de-duplicated list of image paths/URLs.

    A source is a folder (searched recursively), a glob, a single image, or a
    ``.txt``/``.lst`` file listing one source per line. Raises FileNotFoundError
    naming the source when it matches nothing. ``others``, when given, counts the files
    of folders and globs that are not images, by extension.
    """
    if isinstance(sources, str):
        sources = [sources]
    found: list[str] = []
    for src in sources:
        src = os.fspath(src)
        if src.lower().endswith((".txt", ".lst")) and not any(c in src for c in "*?["):
            with fsspec.open(src, "rt") as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
            found.extend(list_images(lines, others))
            continue
        fs, path = fsspec.core.url_to_fs(src)
        glob = any(c in src for c in "*?[")
        if glob or fs.isdir(path):
            listed = fs.glob(path) if glob else fs.find(path)
            matches = [p for p in listed if _is_image(p)]
            for p in listed:
                if not _is_image(p):
                    _count_other(p, others)
        elif fs.exists(path):
            matches = [path]
        else:
            raise FileNotFoundError(f"{src}: no such file, folder or glob")
        if not matches:
            raise FileNotFoundError(
                f"{src}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
        found.extend(_with_protocol(fs, p, src) for p in matches)
    return sorted(dict.fromkeys(found))
