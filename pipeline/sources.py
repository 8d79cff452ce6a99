"""Resolve image sources (folders, globs, fsspec URLs, list files) to file URLs.

Shared by training (crops), archiving (one record per image) and evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import fsspec

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm",
                    ".gif", ".avif", ".heic", ".heif", ".hif", ".jxl")


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _with_protocol(fs: fsspec.AbstractFileSystem, path: str, original: str) -> str:
    if "://" in original:
        proto = original.split("://", 1)[0]
        return f"{proto}://{path}" if "://" not in path else path
    return path


def list_images(sources: str | Iterable[str]) -> list[str]:
    """Expand sources into a sorted, de-duplicated list of image paths/URLs.

    A source is a folder (searched recursively), a glob, a single image, or a
    ``.txt``/``.lst`` file listing one source per line. Raises FileNotFoundError
    naming the source when it matches nothing.
    """
    if isinstance(sources, str):
        sources = [sources]
    found: list[str] = []
    for src in sources:
        src = os.fspath(src)
        if src.lower().endswith((".txt", ".lst")) and not any(c in src for c in "*?["):
            with fsspec.open(src, "rt") as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
            found.extend(list_images(lines))
            continue
        fs, path = fsspec.core.url_to_fs(src)
        if any(c in src for c in "*?["):
            matches = [p for p in fs.glob(path) if _is_image(p)]
        elif fs.isdir(path):
            matches = [p for p in fs.find(path) if _is_image(p)]
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
