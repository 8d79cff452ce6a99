"""Classical codecs for rate–distortion baselines: JPEG, WebP, AVIF, HEIC (x265), JPEG XL.

Each codec is ``encode(PIL RGB image, quality) -> bytes`` and ``decode(bytes) -> PIL
RGB image``, with a 0–100 style quality knob. :func:`encode_at_bpp` finds the quality
whose *real file size* lands closest to a target bpp, so baselines can be compared
with a learned codec at the rate it reached on each image. A codec whose library is
missing or broken is reported by :func:`available_codecs` instead of crashing.

Settings (fixed so numbers are reproducible): JPEG with optimised Huffman tables and
4:2:0; WebP method 6; AVIF speed 6, 4:2:0 (Pillow's libavif); HEIC via pillow-heif
(libheif + x265, 4:2:0); JPEG XL effort 7 via imagecodecs (``level`` = quality).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image

from cdc.avif_threads import avif_threads


class CodecUnavailableError(RuntimeError):
    """The library behind a classical codec is missing or cannot encode here."""


@dataclass(frozen=True)
class ClassicalCodec:
    name: str  # short id: jpeg, webp, avif, heic, jxl
    label: str  # for plots and tables
    qmin: int
    qmax: int
    _encode: Callable[[Image.Image, int], bytes] = field(repr=False)
    _decode: Callable[[bytes], Image.Image] = field(repr=False)

    def encode(self, img: Image.Image, quality: int) -> bytes:
        if not self.qmin <= quality <= self.qmax:
            raise ValueError(f"{self.name}: quality {quality} outside {self.qmin}..{self.qmax}")
        return self._encode(img.convert("RGB"), int(quality))

    def decode(self, data: bytes) -> Image.Image:
        return self._decode(data).convert("RGB")


def _pil_encode(fmt: str, **opts) -> Callable[[Image.Image, int], bytes]:
    def enc(img: Image.Image, q: int) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=q, **opts)
        return buf.getvalue()
    return enc


def _pil_decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _avif_encode(img: Image.Image, q: int) -> bytes:
    """The refine codec's base-layer settings; never on one thread (``cdc.avif_threads``:
    the same bytes on any machine), the count read per call as an actor may set it."""
    buf = io.BytesIO()
    img.save(buf, format="AVIF", quality=q, speed=6, subsampling="4:2:0",
             max_threads=avif_threads())
    return buf.getvalue()


def _heic_encode(img: Image.Image, q: int) -> bytes:
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, quality=q, chroma=420)
    return buf.getvalue()


def _heic_decode(data: bytes) -> Image.Image:
    import pillow_heif

    return pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True).to_pillow()


def _jxl_encode(img: Image.Image, q: int) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode(np.asarray(img), level=q, effort=7))


def _jxl_decode(data: bytes) -> Image.Image:
    import imagecodecs

    return Image.fromarray(imagecodecs.jpegxl_decode(data))


CODECS: dict[str, ClassicalCodec] = {c.name: c for c in [
    ClassicalCodec("jpeg", "JPEG", 1, 95, _pil_encode("JPEG", optimize=True, subsampling="4:2:0"),
                   _pil_decode),
    ClassicalCodec("webp", "WebP", 0, 100, _pil_encode("WEBP", method=6), _pil_decode),
    ClassicalCodec("avif", "AVIF", 0, 100, _avif_encode, _pil_decode),
    ClassicalCodec("heic", "HEIC (x265)", 0, 100, _heic_encode, _heic_decode),
    ClassicalCodec("jxl", "JPEG XL", 0, 99, _jxl_encode, _jxl_decode),
]}


@cache
def _probe(name: str) -> str | None:
    codec = CODECS[name]
    img = Image.fromarray((np.indices((24, 40)).sum(0) % 256).astype(np.uint8)).convert("RGB")
    try:
        out = codec.decode(codec.encode(img, (codec.qmin + codec.qmax) // 2))
    except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
        return f"{type(e).__name__}: {e}"
    if out.size != img.size:
        return f"decoded size {out.size} != {img.size}"
    return None


def available_codecs() -> dict[str, str | None]:
    """{name: None if usable, else why not} (probed once by a tiny encode/decode)."""
    return {name: _probe(name) for name in CODECS}


def get_codec(name: str) -> ClassicalCodec:
    """The codec ``name``; raises CodecUnavailableError saying why it cannot run here."""
    if name not in CODECS:
        raise KeyError(f"unknown classical codec {name!r}; known: {', '.join(CODECS)}")
    reason = _probe(name)
    if reason:
        raise CodecUnavailableError(f"{CODECS[name].label} is unavailable here: {reason}")
    return CODECS[name]


def bpp(data: bytes, img: Image.Image) -> float:
    """Bits per pixel of a real byte string for ``img``."""
    return 8 * len(data) / (img.width * img.height)


@dataclass
class BppMatch:
    quality: int
    data: bytes
    bpp: float
    target: float
    encodes: int  # how many encodes the search took


def encode_at_bpp(codec: ClassicalCodec | str, img: Image.Image, target_bpp: float) -> BppMatch:
    """Encode at the quality whose real file size gives bpp closest to ``target_bpp``.

    Binary search for the highest quality at or below the target (file size grows with
    quality, nearly monotonically), then take whichever neighbour lands closer. Targets
    outside the codec's range give the lowest / highest quality.
    """
    codec = get_codec(codec) if isinstance(codec, str) else codec
    cache: dict[int, bytes] = {}

    def at(q: int) -> float:
        if q not in cache:
            cache[q] = codec.encode(img, q)
        return bpp(cache[q], img)

    lo, hi = codec.qmin, codec.qmax
    if at(lo) >= target_bpp:
        best = lo
    elif at(hi) <= target_bpp:
        best = hi
    else:  # invariant: at(lo) < target < at(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if at(mid) <= target_bpp:
                lo = mid
            else:
                hi = mid
        best = min((lo, hi), key=lambda q: (abs(at(q) - target_bpp), q))
    return BppMatch(best, cache[best], at(best), target_bpp, len(cache))
