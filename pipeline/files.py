"""File I/O for the codec: read/validate images, write outputs atomically.

"Nothing written half-way": every output goes to a temporary name beside the
destination and is renamed into place only when complete, so a failure never
leaves a truncated file and never clobbers an existing good one.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import fsspec
from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = 1 << 28  # refuse decompression bombs beyond ~268 MP


class InputError(Exception):
    """An input file is missing or unreadable; the message names the file."""


def read_bytes(url: str | os.PathLike) -> bytes:
    url = os.fspath(url)
    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{url}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{url}: is a directory, not a file") from None
    except OSError as e:
        raise InputError(f"{url}: cannot read ({e})") from e


def decode_image(data: bytes, name: str) -> Image.Image:
    """Fully decode image bytes (so truncated files fail here, not later)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{name}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{name}: corrupt or truncated image ({e})") from None
    return img


def read_image(url: str | os.PathLike) -> Image.Image:
    return decode_image(read_bytes(url), os.fspath(url))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a local file atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


FORMATS = {".png": "PNG", ".webp": "WEBP", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
           ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM"}


def encode_image(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    kw = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def image_format_for(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise InputError(f"{path}: unknown output image extension {ext!r}; "
                         f"use one of {', '.join(sorted(FORMATS))}")
    return FORMATS[ext]


def save_image_atomic(img: Image.Image, path: str | os.PathLike) -> None:
    write_bytes_atomic(path, encode_image(img, image_format_for(path)))
