"""File I/O for the codec: read/validate images, write outputs atomically.

"Nothing written half-way": every output goes to a temporary name beside the
destination and is renamed into place only when complete, so a failure never
leaves a truncated file and never clobbers an existing good one. Outputs get the
permissions any new file gets (``0666`` less the process umask), like ``cp`` or a shell
redirection would give them.

Reading: :func:`decode_image` refuses images over a pixel limit from the header, before
decoding them (:data:`DEFAULT_MAX_PIXELS`, or the caller's ``max_pixels``), applies the
EXIF orientation and an embedded colour profile (to sRGB), and keeps the first frame of an
animated image, with a note saying what it changed (:func:`input_note`, on the image
itself). Nothing here is process-wide state: a job passes its limit with each call
(``EncodeOptions.max_pixels``) and reads each note off the image it decoded, so two jobs in
one worker process cannot see each other's settings or notes.
"""

from __future__ import annotations

import io
import os
import secrets
import warnings
from pathlib import Path

import fsspec
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.photo_metadata import read_metadata

#: ``img.info`` key of the capture metadata :func:`decode_image` read (see
#: :func:`input_metadata`).
META_INFO = "cdc_photo_metadata"

#: Largest image (width x height) read by default: 32 Mi pixels (e.g. 8192x4096, ~5800 px
#: square). Sized for a 24 GB, 2-core machine: CDC compression on CPU takes about
#: 1.1 GB + 0.21 GB per megapixel (measured, cdc-small), so ~8 GB at the limit, leaving room
#: for the rest of the machine; a 144 MP image would need ~31 GB. Override with
#: ``--max-pixels`` (CLI) or ``max_pixels=``.
DEFAULT_MAX_PIXELS = 1 << 25
#: The ceiling for any limit: Pillow's decompression-bomb limit (it refuses larger images).
HARD_MAX_PIXELS = 1 << 28
Image.MAX_IMAGE_PIXELS = HARD_MAX_PIXELS
# decode_image checks the size itself (below HARD_MAX_PIXELS) and refuses with one line;
# Pillow's extra warning for images between 1x and 2x its limit would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# A photo with a damaged EXIF block decodes fine; its metadata is dropped
# (pipeline.photo_metadata). Pillow's warnings about it would only be noise on stderr.
warnings.filterwarnings("ignore", message="(Corrupt EXIF data|Metadata Warning)",
                        category=UserWarning)


class InputError(Exception):
    """An input file is missing or unreadable; the message names the file."""


def check_max_pixels(n: int) -> int:
    """``n`` if it is a usable pixel limit (1 .. HARD_MAX_PIXELS), else ValueError."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= HARD_MAX_PIXELS:
        raise ValueError(f"max_pixels must be an int in 1..{HARD_MAX_PIXELS}, got {n!r}")
    return n


def too_large(name: str, w: int, h: int, limit: int) -> str:
    """The one-line refusal of an image over the pixel limit."""
    mp = w * h / 1e6
    size = f"{w}x{h} image" + (f" ({mp:.1f} MP)" if mp >= 0.1 else "")
    return f"{name}: {size} is over the {limit} pixel limit (--max-pixels)"


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


def input_note(img: Image.Image) -> str:
    """What reading changed about the input beyond the codec's own conversion note (the
    frames of an animated image that were dropped), or ``""``."""
    return str(img.info.get("cdc_note", ""))


def decode_image(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """Fully decode image bytes (so truncated files fail here, not later).

    Pillow's formats, HEIC/HEIF and JPEG XL (:mod:`pipeline.image_inputs`). Images over
    ``max_pixels`` (default: :data:`DEFAULT_MAX_PIXELS`) are refused from their header,
    before any pixel is decoded. The EXIF orientation is applied (a photo stored 96x64
    with "rotate 90" comes out 64x96, as viewers show it), and an embedded colour profile
    other than sRGB converts the pixels to sRGB (:mod:`cdc.colour`: decodes carry no profile,
    so a viewer shows them as sRGB). An animated or multi-frame image keeps its first frame.
    :func:`input_note` of the result says what of this happened. The photo's capture
    metadata (:mod:`pipeline.photo_metadata`) is read before the orientation is applied and
    left in ``img.info[META_INFO]``.
    """
    from cdc.colour import to_srgb
    from cdc.image import FRAMES_INFO, SOURCE_BITS_INFO, high_bit_depth  # here: cdc imports torch
    from pipeline.image_inputs import is_jxl, jxl_size, open_jxl, register_heif

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else check_max_pixels(max_pixels)
    register_heif()
    try:
        jxl = is_jxl(data)
        img = None if jxl else Image.open(io.BytesIO(data))
        w, h = jxl_size(data) if jxl else img.size
        if w * h > limit:
            raise InputError(too_large(name, w, h, limit))
        if jxl:
            img, frames = open_jxl(data, name), 1
        else:
            frames = getattr(img, "n_frames", 1)
            # a HEIF opens on its primary image, which need not be the first: keep it
            if frames > 1 and img.format != "HEIF":
                img.seek(0)
        bits16 = high_bit_depth(img)  # from the raw mode, which load() forgets
        img.load()
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{name}: image is over the {limit} pixel limit ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as e:
        # RuntimeError: libjxl's and libheif's errors (imagecodecs, pillow-heif); libheif's
        # messages end in a newline: one line, whatever the library wrote
        raise InputError(f"{name}: corrupt or truncated image ({' '.join(str(e).split())})"
                         ) from None
    meta = read_metadata(img)
    try:
        if not jxl:  # libjxl applied the codestream's orientation, which prevails
            ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - unreadable EXIF: the pixels are still good, keep them as stored
        pass
    fmt = img.format
    img, colour_note = to_srgb(img)
    notes = [colour_note] if colour_note else []
    if bits16:
        img.info[SOURCE_BITS_INFO] = 16
    if frames > 1:
        notes.insert(0, f"HEIF with {frames} images: only the primary image is coded"
                     if fmt == "HEIF" else
                     f"{fmt or 'image'} with {frames} frames: only the first frame is coded")
        img.info[FRAMES_INFO] = frames  # the stream records it (header flag bit 7)
    if notes:
        img.info["cdc_note"] = "; ".join(notes)
    if meta:
        img.info[META_INFO] = meta
    return img


def input_metadata(img: Image.Image) -> dict:
    """The capture metadata :func:`decode_image` read from the file (``{}`` if none)."""
    return dict(img.info.get(META_INFO) or {})


def read_image(url: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    return decode_image(read_bytes(url), os.fspath(url), max_pixels)


def _create_temp(path: Path):
    """A new temp file beside ``path``, opened for writing with mode 0666 (the kernel then
    applies the umask, as for any new file; ``mkstemp`` would force 0600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
        except FileExistsError:
            continue
        return fd, tmp
    raise FileExistsError(f"{path}: could not create a temporary file beside it")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a local file atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


FORMATS = {".png": "PNG", ".webp": "WEBP", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
           ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM"}


#: zlib level of written PNGs. Pillow's default (6) spends 0.11 s on a decoded Kodak image,
#: more than a preview decode's own work; level 3 takes 0.046 s for an 11 % larger file (level
#: 1: 0.032 s, +18 %; measured 2026-12-07 on kodim23's preview, one core). PNGs written here
#: are decodes (`cdc decompress`, `get`, `export`, the HTTP service and its cache), wanted soon.
PNG_LEVEL = 3


def encode_image(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    kw = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else \
        {"compress_level": PNG_LEVEL} if fmt == "PNG" else {}
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
