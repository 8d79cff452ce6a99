"""Output image formats: names, media types, file names, PNG -> other formats, and the
capture metadata written into an output.

Decoded images are cached as PNG (lossless); a request for another format is re-encoded
from that PNG rather than decoded again. Caches hold pixels only: a record's capture
metadata (:func:`stored_metadata`) is written into the output bytes last
(:func:`pipeline.photo_metadata.embed`), and a local output file is dated as its source was
(:func:`restore_file_time`).
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from PIL import Image

from pipeline.files import encode_image
from pipeline.photo_metadata import Policy, apply_policy, check_metadata, file_time

if TYPE_CHECKING:
    from storage import Archive

OUTPUT_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG", "jpg": "JPEG"}
MEDIA_TYPES = {"PNG": "image/png", "WEBP": "image/webp", "JPEG": "image/jpeg"}


def output_format(name: str) -> str:
    fmt = OUTPUT_FORMATS.get(name.lower().lstrip("."))
    if fmt is None:
        raise ValueError(f"unknown image format {name!r}; use one of png, webp, jpeg")
    return fmt


def transcode(png: bytes, fmt: str) -> bytes:
    """PNG bytes re-encoded as ``fmt``."""
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        return encode_image(im, fmt)


def output_name(key: str, fmt: str) -> str:
    """Where ``export`` writes ``key``: its path with the extension replaced."""
    ext = {"PNG": ".png", "WEBP": ".webp", "JPEG": ".jpg"}[fmt]
    root, old = posixpath.splitext(key)
    return (root if old else key) + ext


def stored_metadata(archive: Archive, key: str, policy: Policy = "keep") -> dict:
    """The record's stored capture metadata, as much of it as ``policy`` keeps. Raises
    CorruptArchiveError or :class:`pipeline.photo_metadata.MetadataError` (one line, naming
    the archive and key) where it is damaged or is not what a writer writes."""
    if policy == "none":
        return {}
    meta = check_metadata(archive.metadata(key), f"{archive.url}: {key}")
    return apply_policy(meta, policy)


def restore_file_time(path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Date a written local file as its source was (``FileModified``), where known."""
    t = file_time(meta)
    if t is not None:
        os.utime(path, (t, t))
