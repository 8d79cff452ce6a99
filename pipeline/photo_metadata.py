"""A photo's capture metadata (when, with what, where), kept beside its bitstream.

Why: a codec codes pixels only, so before this every rebuilt photo came back without its
capture date, camera and location, and an archive of a photo collection lost what people
sort and search it by. What is kept is a fixed, small set of EXIF tags (at most
:data:`MAX_JSON_BYTES`, typically 200-600 bytes of JSON): the dates and their time
offsets, camera and lens, exposure, author and copyright, and the GPS position. Left out
on purpose: the orientation (the pixels are stored upright already), maker notes and the
embedded thumbnail (often more bytes than a whole coded photo), serial numbers and
anything else.

Beside EXIF, the curation a photographer adds in XMP — rating, colour label, title, caption,
keywords — is kept too (:mod:`pipeline.photo_xmp`; names ``Xmp*``).

The form stored is JSON (tag name -> a string, an integer, a rational ``[num, den]``, a
list of rationals or, for keywords, of strings), so any reader of the archive can read it
without this package; the form written back is EXIF and a minimal XMP packet, in PNG
(``eXIf``, ``iTXt``), JPEG (two ``APP1``) and WebP (``EXIF``, ``XMP ``) outputs. Nothing
here imports torch.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import struct
import warnings
import zlib
from collections.abc import Mapping
from typing import Any, Literal

from PIL import Image

from pipeline.photo_iptc import read_iptc
from pipeline.photo_xmp import FIELDS as XMP_FIELDS
from pipeline.photo_xmp import JPEG_XMP_ID, PNG_XMP_KEY, packet_of, read_xmp, xmp_packet
from pipeline.photo_xmp import valid as xmp_valid

#: Bound on one photo's metadata as canonical JSON: an archive can be hostile, and a
#: real photo's kept tags take well under a tenth of this.
MAX_JSON_BYTES = 4096
MAX_TEXT = 512  # characters of one text tag (longer ones are left out, not cut)

IFD0, EXIF_IFD, GPS_IFD = 0, 0x8769, 0x8825
Kind = Literal["text", "int", "rational", "srational", "rational3"]

#: name -> (IFD, tag id, kind): the tags kept, and the only names a stored record may hold.
TAGS: dict[str, tuple[int, int, Kind]] = {
    "ImageDescription": (IFD0, 0x010E, "text"),
    "Make": (IFD0, 0x010F, "text"),
    "Model": (IFD0, 0x0110, "text"),
    "Software": (IFD0, 0x0131, "text"),
    "DateTime": (IFD0, 0x0132, "text"),
    "Artist": (IFD0, 0x013B, "text"),
    "Copyright": (IFD0, 0x8298, "text"),
    "ExposureTime": (EXIF_IFD, 0x829A, "rational"),
    "FNumber": (EXIF_IFD, 0x829D, "rational"),
    "ExposureProgram": (EXIF_IFD, 0x8822, "int"),
    "ISOSpeedRatings": (EXIF_IFD, 0x8827, "int"),
    "DateTimeOriginal": (EXIF_IFD, 0x9003, "text"),
    "DateTimeDigitized": (EXIF_IFD, 0x9004, "text"),
    "OffsetTime": (EXIF_IFD, 0x9010, "text"),
    "OffsetTimeOriginal": (EXIF_IFD, 0x9011, "text"),
    "OffsetTimeDigitized": (EXIF_IFD, 0x9012, "text"),
    "ExposureBiasValue": (EXIF_IFD, 0x9204, "srational"),
    "MeteringMode": (EXIF_IFD, 0x9207, "int"),
    "Flash": (EXIF_IFD, 0x9209, "int"),
    "FocalLength": (EXIF_IFD, 0x920A, "rational"),
    "SubsecTime": (EXIF_IFD, 0x9290, "text"),
    "SubsecTimeOriginal": (EXIF_IFD, 0x9291, "text"),
    "SubsecTimeDigitized": (EXIF_IFD, 0x9292, "text"),
    "WhiteBalance": (EXIF_IFD, 0xA403, "int"),
    "FocalLengthIn35mmFilm": (EXIF_IFD, 0xA405, "int"),
    "LensMake": (EXIF_IFD, 0xA433, "text"),
    "LensModel": (EXIF_IFD, 0xA434, "text"),
    "GPSLatitudeRef": (GPS_IFD, 0x0001, "text"),
    "GPSLatitude": (GPS_IFD, 0x0002, "rational3"),
    "GPSLongitudeRef": (GPS_IFD, 0x0003, "text"),
    "GPSLongitude": (GPS_IFD, 0x0004, "rational3"),
    "GPSAltitudeRef": (GPS_IFD, 0x0005, "int"),
    "GPSAltitude": (GPS_IFD, 0x0006, "rational"),
    "GPSTimeStamp": (GPS_IFD, 0x0007, "rational3"),
    "GPSDateStamp": (GPS_IFD, 0x001D, "text"),
}
_U32, _S32 = (0, 2**32 - 1), (-(2**31), 2**31 - 1)
_INT_RANGE = (0, 65535)

#: What a job keeps: everything in :data:`TAGS`, everything but the GPS tags, or nothing.
Policy = Literal["keep", "no-gps", "none"]
POLICIES: tuple[Policy, ...] = ("keep", "no-gps", "none")


class MetadataError(ValueError):
    """Stored metadata that is not what this module writes (one line, no traceback)."""


def _ratio(v: Any, signed: bool) -> list[int] | None:
    """A source value as an exact ``[num, den]`` in the tag's range, or None."""
    from PIL.TiffImagePlugin import IFDRational  # here: the decode paths never load it

    if isinstance(v, IFDRational):
        num, den = v.numerator, v.denominator
    elif isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
        num, den = v
    elif isinstance(v, int) and not isinstance(v, bool):
        num, den = v, 1
    else:
        return None
    lo, hi = _S32 if signed else _U32
    if not isinstance(num, int) or not isinstance(den, int) or den <= 0:
        return None
    return [num, den] if lo <= num <= hi and den <= _U32[1] else None


def _from_source(kind: Kind, v: Any) -> Any:
    """A value as Pillow read it -> its JSON form, or None where it does not fit the tag."""
    if kind == "text":
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if not isinstance(v, str):
            return None
        v = " ".join(v.replace("\x00", "").split())  # a multi-line description: one line
        return v if 0 < len(v) <= MAX_TEXT and v.isprintable() else None
    if kind == "int":
        if isinstance(v, bytes) and len(v) == 1:
            v = v[0]  # a BYTE tag (GPSAltitudeRef) reads as one byte
        elif isinstance(v, tuple) and v:
            v = v[0]  # ISOSpeedRatings may hold several values; the first is the ISO
        ok = isinstance(v, int) and not isinstance(v, bool)
        return v if ok and _INT_RANGE[0] <= v <= _INT_RANGE[1] else None
    if kind == "rational3":
        if not isinstance(v, tuple) or len(v) != 3:
            return None
        parts = [_ratio(x, False) for x in v]
        return None if None in parts else parts
    return _ratio(v, kind == "srational")


def _ifd(exif: Image.Exif, ifd: int) -> Mapping[int, Any]:
    return exif if ifd == IFD0 else exif.get_ifd(ifd)


def _size(meta: Mapping[str, Any]) -> int:
    return len(dumps(meta).encode())


def read_metadata(img: Image.Image) -> dict[str, Any]:
    """The kept tags of ``img``'s EXIF (call before the orientation is applied), of its
    XMP packet (:mod:`pipeline.photo_xmp`) and, for fields neither has, of its IPTC-IIM
    block (:mod:`pipeline.photo_iptc`); ``{}`` where it has none or they cannot be
    read: metadata never fails a photo. XMP properties that would take the whole over
    :data:`MAX_JSON_BYTES` are left out (keywords last)."""
    out = _read_exif(img)
    if _size(out) > MAX_JSON_BYTES:
        out = {}
    try:
        xmp = read_xmp(packet_of(img), MAX_TEXT)
    except Exception:  # noqa: BLE001 - a packet that breaks the parser: keep the photo
        xmp = {}
    for name in XMP_FIELDS:  # in their order of importance: keywords last
        if name in xmp and _size({**out, name: xmp[name]}) <= MAX_JSON_BYTES:
            out[name] = xmp[name]
    try:
        iptc = read_iptc(img, MAX_TEXT)
    except Exception:  # noqa: BLE001 - a block that breaks the parser: keep the photo
        iptc = {}
    if "DateTimeOriginal" in out:  # the IIM date only where the photo has none
        iptc.pop("DateTimeOriginal", None)
        iptc.pop("OffsetTimeOriginal", None)
    for name, value in iptc.items():  # a fallback: EXIF and XMP win
        if name not in out and _size({**out, name: value}) <= MAX_JSON_BYTES:
            out[name] = value
    return out


def _read_exif(img: Image.Image) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # Pillow warns on corrupt EXIF: expected input here
            warnings.simplefilter("ignore")
            exif = img.getexif()
            ifds = {ifd: _ifd(exif, ifd) for ifd in (IFD0, EXIF_IFD, GPS_IFD)}
        out: dict[str, Any] = {}
        for name, (ifd, tag, kind) in TAGS.items():
            raw = ifds[ifd].get(tag)
            value = None if raw is None else _from_source(kind, raw)
            if value is not None:
                out[name] = value
    except Exception:  # noqa: BLE001 - broken EXIF: keep the photo, drop its metadata
        return {}
    return out


def check_policy(policy: str) -> Policy:
    """``policy`` if it is one of :data:`POLICIES`, else ValueError naming them."""
    if policy not in POLICIES:
        raise ValueError(f"metadata policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    return policy  # type: ignore[return-value]


def apply_policy(meta: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    """What of ``meta`` a job with ``policy`` keeps: the source's digest under every policy
    (it says which bytes were archived, nothing about the photo)."""
    if check_policy(policy) == "none":
        return {k: v for k, v in meta.items() if k == SOURCE_SHA256}
    return {k: v for k, v in meta.items() if policy == "keep" or not k.startswith("GPS")}


def dumps(meta: Mapping[str, Any]) -> str:
    """Canonical JSON (sorted keys, no spaces): equal metadata gives equal bytes. The form
    of ``storage.records.meta_json``, written again here because importing ``storage`` loads
    zarr, which the decode paths that read photos must not pay for."""
    return json.dumps(dict(meta), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


#: The source file's modification time (UTC, ISO 8601 to the second), kept like tar keeps
#: it, so that an export can date its files as the originals were (local sources only:
#: on an object store it would cost a request per file).
FILE_MODIFIED = "FileModified"
_FILE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def file_modified(path: str) -> dict[str, str]:
    """``{FILE_MODIFIED: ...}`` for a local file (a path or ``file://`` URL), else ``{}``."""
    if "://" in path and not path.startswith("file://"):
        return {}
    try:
        t = os.stat(path.removeprefix("file://")).st_mtime
        when = datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc)
    except (OSError, OverflowError, ValueError):
        return {}
    return {FILE_MODIFIED: when.strftime("%Y-%m-%dT%H:%M:%SZ")}


#: The first 128 bits of the source file's SHA-256 (32 hex digits): which bytes were archived,
#: so identical files can be found (``cdc ls --duplicates``) and a source whose time changed
#: but whose bytes did not is not taken for an edit. Kept under every ``--metadata`` policy,
#: never written into a rebuilt file.
SOURCE_SHA256 = "SourceSHA256"
_DIGEST = re.compile(r"[0-9a-f]{32}")
#: What a record keeps about its source file, not the photo: neither is written back as EXIF.
FILE_FIELDS = (FILE_MODIFIED, SOURCE_SHA256)


def source_digest(data: bytes) -> dict[str, str]:
    """``{SOURCE_SHA256: ...}`` of a source file's bytes."""
    return {SOURCE_SHA256: hashlib.sha256(data).hexdigest()[:32]}


def digest_of(meta: Mapping[str, Any]) -> str | None:
    """The stored :data:`SOURCE_SHA256` of ``meta`` when well formed, else None."""
    v = meta.get(SOURCE_SHA256)
    return v if isinstance(v, str) and _DIGEST.fullmatch(v) else None


def file_time(meta: Mapping[str, Any]) -> float | None:
    """The POSIX time of ``meta``'s :data:`FILE_MODIFIED`, or None."""
    v = meta.get(FILE_MODIFIED)
    if not isinstance(v, str) or not _FILE_TIME.fullmatch(v):
        return None
    try:
        return datetime.datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def taken(meta: Mapping[str, Any]) -> str | None:
    """When the photo was taken, ISO 8601 (``2021-07-04T18:22:10+02:00``; no offset where the
    file has none), from ``DateTimeOriginal`` else ``DateTime``; None if neither reads."""
    for when, offset in (("DateTimeOriginal", "OffsetTimeOriginal"), ("DateTime", "OffsetTime")):
        text = meta.get(when)
        if not isinstance(text, str) or len(text) < 19 or text[4] != ":" or text[7] != ":":
            continue
        iso = f"{text[:4]}-{text[5:7]}-{text[8:10]}T{text[11:19]}"
        if not (iso[:4] + iso[5:7] + iso[8:10] + iso[11:13] + iso[14:16] + iso[17:19]).isdigit():
            continue
        off = meta.get(offset)
        ok = isinstance(off, str) and len(off) == 6 and off[0] in "+-" and off[3] == ":"
        return iso + (off if ok else "")
    return None


def _valid(kind: Kind, v: Any) -> bool:
    def ratio(x: Any, signed: bool) -> bool:
        lo, hi = _S32 if signed else _U32
        return (isinstance(x, list) and len(x) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) for i in x)
                and lo <= x[0] <= hi and 0 < x[1] <= _U32[1])

    if kind == "text":
        return isinstance(v, str) and 0 < len(v) <= MAX_TEXT and v.isprintable()
    if kind == "int":
        lo, hi = _INT_RANGE
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
    if kind == "rational3":
        return isinstance(v, list) and len(v) == 3 and all(ratio(x, False) for x in v)
    return ratio(v, kind == "srational")


def check_metadata(meta: Any, where: str) -> dict[str, Any]:
    """``meta`` if it is metadata this module writes, else :class:`MetadataError` naming
    ``where`` and the first problem (a stored archive can be hostile)."""
    if not isinstance(meta, dict):
        raise MetadataError(f"{where}: metadata is not a JSON object")
    if _size(meta) > MAX_JSON_BYTES:
        raise MetadataError(f"{where}: metadata is over {MAX_JSON_BYTES} bytes")
    for name, value in meta.items():
        if name not in TAGS and name not in XMP_FIELDS and name not in FILE_FIELDS:
            raise MetadataError(f"{where}: metadata has an unknown tag {name!r}")
        if name == FILE_MODIFIED:
            good = file_time(meta) is not None
        elif name == SOURCE_SHA256:
            good = digest_of(meta) is not None
        elif name in XMP_FIELDS:
            good = xmp_valid(name, value, MAX_TEXT)
        else:
            good = _valid(TAGS[name][2], value)
        if not good:
            raise MetadataError(f"{where}: metadata tag {name!r} has a bad value")
    return meta


def exif_bytes(meta: Mapping[str, Any]) -> bytes:
    """``meta`` as a TIFF-structured EXIF block (no ``Exif\\0\\0`` prefix), or ``b""``."""
    exif_tags = {k: v for k, v in meta.items() if k in TAGS}
    if not exif_tags:
        return b""
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    for name, value in exif_tags.items():
        ifd, tag, kind = TAGS[name]
        target = exif if ifd == IFD0 else exif.get_ifd(ifd)
        if kind in ("rational", "srational"):
            value = IFDRational(*value)
        elif kind == "rational3":
            value = tuple(IFDRational(*x) for x in value)
        target[tag] = value
    data = exif.tobytes()
    return data[6:] if data.startswith(b"Exif\x00\x00") else data


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _riff_chunk(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)


def _canvas(w: int, h: int) -> bytes:
    return (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")


def _webp_with(data: bytes, exif: bytes, xmp: bytes) -> bytes:
    """A simple (``VP8L``/``VP8 ``) or extended (``VP8X``) WebP with ``EXIF`` and ``XMP ``
    chunks; ``data`` unchanged where its layout is not one of those or it has either."""
    chunks, pos = [], 12
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunks.append((tag, data[pos + 8:pos + 8 + size]))
        pos += 8 + size + (size & 1)
    tags = [t for t, _ in chunks]
    flags = (0x08 if exif else 0) | (0x04 if xmp else 0)  # VP8X: EXIF, XMP present
    if b"EXIF" in tags or b"XMP " in tags:
        return data
    if tags and tags[0] == b"VP8X" and len(chunks[0][1]) == 10:
        chunks = [(b"VP8X", bytes([chunks[0][1][0] | flags]) + chunks[0][1][1:]), *chunks[1:]]
    elif tags == [b"VP8L"] and len(chunks[0][1]) >= 5 and chunks[0][1][0] == 0x2F:
        bits = struct.unpack("<I", chunks[0][1][1:5])[0]
        w, h, alpha = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, (bits >> 28) & 1
        chunks = [(b"VP8X", bytes([flags | (0x10 if alpha else 0), 0, 0, 0]) + _canvas(w, h)),
                  *chunks]
    elif tags == [b"VP8 "] and len(chunks[0][1]) >= 10 and chunks[0][1][3:6] == b"\x9d\x01\x2a":
        w, h = (struct.unpack("<H", chunks[0][1][6:8])[0] & 0x3FFF,
                struct.unpack("<H", chunks[0][1][8:10])[0] & 0x3FFF)
        chunks = [(b"VP8X", bytes([flags, 0, 0, 0]) + _canvas(w, h)), *chunks]
    else:
        return data
    chunks += [(t, c) for t, c in ((b"EXIF", exif), (b"XMP ", xmp)) if c]  # after the image
    body = b"WEBP" + b"".join(_riff_chunk(t, c) for t, c in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _jpeg_app1(body: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def embed(data: bytes, fmt: str, meta: Mapping[str, Any]) -> bytes:
    """Encoded image bytes with ``meta`` written in — EXIF tags as an EXIF block, the XMP
    properties as an XMP packet — for PNG, JPEG and WebP; other formats (and empty
    metadata) come back unchanged. No pixel is decoded or re-encoded."""
    block, xmp = exif_bytes(meta), xmp_packet(meta)
    if not block and not xmp:
        return data
    if fmt == "PNG" and data.startswith(b"\x89PNG\r\n\x1a\n"):
        end_ihdr = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4  # chunks go after IHDR
        extra = (_png_chunk(b"eXIf", block) if block else b"") + (
            _png_chunk(b"iTXt", PNG_XMP_KEY.encode() + b"\x00\x00\x00\x00\x00" + xmp)
            if xmp else b"")
        return data[:end_ihdr] + extra + data[end_ihdr:]
    if fmt == "JPEG" and data.startswith(b"\xff\xd8"):
        segments = [b"Exif\x00\x00" + block] if block else []
        segments += [JPEG_XMP_ID + xmp] if xmp else []
        if any(len(seg) + 2 > 0xFFFF for seg in segments):
            return data
        at = 2  # after SOI, and after a JFIF APP0 segment, which must come first
        if data[2:4] == b"\xff\xe0":
            at = 4 + struct.unpack(">H", data[4:6])[0]
        return data[:at] + b"".join(map(_jpeg_app1, segments)) + data[at:]
    if fmt == "WEBP" and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_with(data, block, xmp)
    return data

