"""Output image formats: names, media types, file names, PNG -> other formats, and the
capture metadata written into an output.

Decoded images are cached as PNG (lossless); a request for another format is re-encoded
from that PNG rather than decoded again. Caches hold pixels only: a record's capture
metadata is written into the output bytes last (:func:`with_capture_metadata`).
"""

from __future__ import annotations

import io
import posixpath
from typing import TYPE_CHECKING

from PIL import Image

from pipeline.files import encode_image
from pipeline.photo_metadata import EMBEDS, Policy, apply_policy, check_metadata, embed

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


def with_capture_metadata(archive: Archive, key: str, data: bytes, fmt: str,
                          policy: Policy = "keep") -> bytes:
    """``data`` (an encoded ``fmt`` image of record ``key``) with the record's stored capture
    metadata written in, as much of it as ``policy`` keeps. Raises CorruptArchiveError or
    :class:`pipeline.photo_metadata.MetadataError` (one line, naming the archive and key)
    where the stored metadata is damaged or is not what a writer writes."""
    if policy == "none" or fmt not in EMBEDS:
        return data
    meta = check_metadata(archive.metadata(key), f"{archive.url}: {key}")
    return embed(data, fmt, apply_policy(meta, policy))
