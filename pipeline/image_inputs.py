"""Photo formats Pillow does not open by itself: HEIC/HEIF and JPEG XL.

Why: HEIC is what every iPhone (and many Android phones) stores by default, and JPEG XL is
what newer cameras and exporters write; the toolkit listed both among its image extensions
but could open neither ("not an image file"), so a phone's photo folder archived as a
folder of failed records. HEIC goes through pillow-heif's Pillow opener (libheif applies
the file's rotation and mirroring and resets the EXIF orientation; a 10-bit photo is read
as 8 bits and says so in ``info["bit_depth"]``); JPEG XL through imagecodecs (libjxl; its
orientation applied). Both packages are already dependencies (the evaluation's HEIC and
JPEG XL baselines).

A JPEG XL file's size is read from its own header (:func:`jxl_size`) so that the pixel
limit refuses a hostile file before libjxl allocates anything, as Pillow's header read
does for the other formats. (``cdc.image``, for its info key, loads torch: the readers
that call this module load it anyway.)
"""

from __future__ import annotations

import functools
import struct

import numpy as np
from PIL import Image

from cdc.image import SOURCE_BITS_INFO

JXL_CODESTREAM = b"\xff\x0a"
JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_MAX_BOXES = 4096
_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


class JxlHeaderError(ValueError):
    """A JPEG XL file whose header or boxes cannot be parsed (the message says where)."""


@functools.cache
def register_heif() -> bool:
    """Let ``Image.open`` read HEIC/HEIF (once per process; pillow-heif's thumbnails, depth
    and auxiliary images are not decoded: only the primary image is coded). False where
    pillow-heif is not installed (a lent GPU machine's training Python): HEIC files are then
    unrecognised, as before."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    return True


def is_jxl(data: bytes) -> bool:
    return data.startswith(JXL_CODESTREAM) or data.startswith(JXL_CONTAINER)


def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of the ISO-BMFF boxes of a JPEG XL container, bounded."""
    out, pos = [], 0
    while pos < len(data):
        if len(out) >= _MAX_BOXES or pos + 8 > len(data):
            raise JxlHeaderError(f"truncated box header at byte {pos}")
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        head = 8
        if size == 1:
            if pos + 16 > len(data):
                raise JxlHeaderError(f"truncated box header at byte {pos}")
            size, head = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = len(data) - pos
        if size < head or pos + size > len(data):
            raise JxlHeaderError(f"box {kind!r} at byte {pos} claims {size} bytes")
        out.append((kind, data[pos + head:pos + size]))
        pos += size
    return out


def _codestream_start(data: bytes) -> bytes:
    """The first bytes of the codestream (enough for its size header)."""
    if data.startswith(JXL_CODESTREAM):
        return data
    for kind, body in _boxes(data):
        if kind == b"jxlc":
            return body
        if kind == b"jxlp":
            return body[4:]  # a 4-byte part index, then the first part
    raise JxlHeaderError("no codestream box (jxlc/jxlp)")


class _Bits:
    """LSB-first bit reader (the JPEG XL codestream's order)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> int:
        value = 0
        for i in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise JxlHeaderError("codestream ends inside its size header")
            value |= ((self.data[byte] >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def u32_size(self) -> int:
        return self.read((9, 13, 18, 30)[self.read(2)]) + 1


def jxl_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a JPEG XL file's size header (before any decoding)."""
    cs = _codestream_start(data)
    if not cs.startswith(JXL_CODESTREAM):
        raise JxlHeaderError("codestream does not start with the JPEG XL signature")
    bits = _Bits(cs[2:])
    div8 = bits.read(1)
    height = (bits.read(5) + 1) * 8 if div8 else bits.u32_size()
    ratio = bits.read(3)
    if ratio:
        num, den = _RATIOS[ratio]
        width = height * num // den
    else:
        width = (bits.read(5) + 1) * 8 if div8 else bits.u32_size()
    return width, height


def jxl_exif(data: bytes) -> bytes:
    """The EXIF block of a JPEG XL container (``b""`` for a bare codestream or none), as
    Pillow's ``info["exif"]`` holds it."""
    if not data.startswith(JXL_CONTAINER):
        return b""
    for kind, body in _boxes(data):
        if kind == b"Exif" and len(body) >= 4:
            offset = struct.unpack(">I", body[:4])[0]
            if 4 + offset <= len(body):
                return b"Exif\x00\x00" + body[4 + offset:]
    return b""


def open_jxl(data: bytes, name: str) -> Image.Image:
    """Decode a JPEG XL file (call :func:`jxl_size` first to bound it) to a Pillow image:
    8-bit L/LA/RGB/RGBA, with ``info[SOURCE_BITS_INFO]`` where it had more bits and
    ``info["exif"]`` from its container. libjxl has applied the codestream's orientation
    (which the format says prevails over the EXIF copy), so the caller must not apply the
    EXIF orientation again."""
    import imagecodecs

    arr = imagecodecs.jpegxl_decode(data, 0, numthreads=1)  # an animation's first frame
    bits = 8
    if arr.dtype == np.uint16:
        arr, bits = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8), 16
    elif arr.dtype.kind == "f":
        arr, bits = (np.clip(arr, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), 16
    elif arr.dtype != np.uint8:
        raise JxlHeaderError(f"{name}: JPEG XL samples of type {arr.dtype} are not supported")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(arr)  # L, LA, RGB or RGBA from the shape
    if bits > 8:
        img.info[SOURCE_BITS_INFO] = bits
    if exif := jxl_exif(data):
        img.info["exif"] = exif  # its orientation is not applied again: see decode_image
    img.format = "JXL"
    return img
