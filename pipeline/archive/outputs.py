"""Output image formats: names, media types, file names, and PNG -> other formats.

Decoded images are cached as PNG (lossless); a request for another format is re-encoded
from that PNG rather than decoded again.
"""

from __future__ import annotations

import io
import posixpath

from PIL import Image

from pipeline.files import encode_image

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
