"""Reading input images: fetch with retries, decode, validate; never raise.

Object stores have transient errors, so a read is retried; a file that reads fine but is
not a valid image (or is too large for the codec) fails at once. Either way the result
is a :class:`Loaded` carrying the error, which becomes a *failed* record: one bad file
costs only itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from PIL import Image

from cdc.bitstream import MAX_SIDE  # torch-free (cdc.image re-exports it)
from pipeline.archive.planning import InputItem
from pipeline.files import (
    DEFAULT_MAX_PIXELS,
    InputError,
    decode_image,
    input_metadata,
    input_note,
    read_bytes,
)
from pipeline.photo_metadata import file_modified, source_digest

DEFAULT_READ_RETRIES = 2


@dataclass
class Loaded:
    key: str
    image: Image.Image | None
    nbytes: int = 0
    width: int = 0
    height: int = 0
    error: str = ""
    note: str = ""  # what reading changed (an animation's other frames dropped), for the job
    meta: dict = field(default_factory=dict)  # capture metadata (pipeline.photo_metadata)


def validate_image(img: Image.Image, name: str, max_pixels: int | None = None) -> None:
    """Refuse images the codec cannot or should not code; the message names the file.

    ``max_pixels`` None: :data:`pipeline.files.DEFAULT_MAX_PIXELS` (jobs pass their own)."""
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    w, h = img.size
    if w < 1 or h < 1:
        raise InputError(f"{name}: empty image ({w}x{h})")
    if w >= MAX_SIDE or h >= MAX_SIDE:  # sides must be < 65536 (the stream header's limit)
        raise InputError(f"{name}: {w}x{h} exceeds the codec's side limit "
                         f"(sides must be < {MAX_SIDE})")
    if w * h > max_pixels:
        raise InputError(f"{name}: {w}x{h} exceeds the {max_pixels} pixel limit")


def load_item(item: InputItem, *, retries: int = DEFAULT_READ_RETRIES, backoff_s: float = 0.2,
              max_pixels: int | None = None) -> Loaded:
    """Read, decode and validate one image; never raises (errors become ``Loaded.error``).

    Read failures are retried ``retries`` times (object stores have transient errors);
    a file that reads fine but is not a valid image fails at once.
    """
    data = None
    for attempt in range(retries + 1):
        try:
            data = read_bytes(item.url)
            break
        except InputError as e:
            if "no such file" in str(e) or attempt == retries:
                return Loaded(item.key, None, error=str(e))
            time.sleep(backoff_s * (attempt + 1))
    assert data is not None
    try:
        img = decode_image(data, item.url, max_pixels=max_pixels)
        validate_image(img, item.url, max_pixels)
    except InputError as e:
        return Loaded(item.key, None, nbytes=len(data), error=str(e))
    return Loaded(item.key, img, nbytes=len(data), width=img.width, height=img.height,
                  note=input_note(img), meta={**input_metadata(img), **file_modified(item.url),
                                              **source_digest(data)})
