"""IPTC-IIM: the captions, keywords, credits and dates that older tools (Photoshop's File
Info, Photo Mechanic, newspaper and agency workflows) wrote into JPEG (APP13, Photoshop
resource 0x0404) and TIFF (tag 33723) before XMP.

Read as a fallback only: a field the photo's EXIF or XMP already carries wins, so the kept
metadata is what current tools show. Mapped onto the fields :mod:`pipeline.photo_metadata`
keeps (and writes back as EXIF and XMP on export; no IIM is written): object name → title,
caption → description, keywords, by-line → artist, copyright notice, date/time created →
``DateTimeOriginal`` and its offset. The block comes from the file, so it is parsed here
with every length checked against what is left (Pillow's own parser refuses datasets over
132 bytes, which long captions are) and at most :data:`MAX_BLOCK` bytes of it.
"""

from __future__ import annotations

import re
from typing import Any

from PIL import Image

from pipeline.photo_xmp import MAX_KEYWORD, MAX_KEYWORDS

MAX_BLOCK = 256 * 1024
_UTF8 = b"\x1b%G"  # 1:90 CodedCharacterSet: ISO 2022 escape for UTF-8
_DATE = re.compile(rb"(\d{4})(\d{2})(\d{2})")
_TIME = re.compile(rb"(\d{2})(\d{2})(\d{2})(?:([+-])(\d{2})(\d{2}))?")


def iim_block(img: Image.Image) -> bytes:
    """The raw IIM data a JPEG or TIFF carried (``b""``: none)."""
    data: Any = None
    photoshop = img.info.get("photoshop")
    if isinstance(photoshop, dict):
        data = photoshop.get(0x0404)
    elif hasattr(img, "tag_v2"):
        data = getattr(img.tag_v2, "_tagdata", {}).get(33723)
    return data if isinstance(data, bytes) else b""


def parse_iim(block: bytes) -> dict[tuple[int, int], list[bytes]]:
    """(record, dataset) -> its values, in order; parsing stops at the first malformed
    dataset (what came before is kept)."""
    out: dict[tuple[int, int], list[bytes]] = {}
    pos, end = 0, min(len(block), MAX_BLOCK)
    while pos + 5 <= end and block[pos] == 0x1C:
        key = (block[pos + 1], block[pos + 2])
        n = int.from_bytes(block[pos + 3:pos + 5], "big")
        pos += 5
        if n & 0x8000:  # extended dataset: the low bits give the length's own length
            k = n & 0x7FFF
            if not 1 <= k <= 4 or pos + k > end:
                break
            n, pos = int.from_bytes(block[pos:pos + k], "big"), pos + k
        if pos + n > end:
            break
        out.setdefault(key, []).append(block[pos:pos + n])
        pos += n
    return out


def read_iptc(img: Image.Image, max_text: int) -> dict[str, Any]:
    """The kept fields of ``img``'s IIM block, named as :mod:`pipeline.photo_metadata`
    names them (``{}`` where it has none or nothing readable)."""
    block = iim_block(img)
    if not block:
        return {}
    iim = parse_iim(block)
    utf8 = iim.get((1, 90), [b""])[0] == _UTF8

    def text(raw: bytes, limit: int) -> str | None:
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            if utf8:
                return None
            s = raw.decode("latin-1")  # IIM's default when no character set is declared
        s = " ".join(s.replace("\x00", " ").split())
        return s if 0 < len(s) <= limit and s.isprintable() else None

    def first(key: tuple[int, int]) -> str | None:
        return next((t for t in (text(v, max_text) for v in iim.get(key, [])) if t), None)

    out: dict[str, Any] = {}
    for key, name in (((2, 5), "XmpTitle"), ((2, 120), "XmpDescription"),
                      ((2, 80), "Artist"), ((2, 116), "Copyright")):
        if (t := first(key)) is not None:
            out[name] = t
    kws = [k for k in (text(v, MAX_KEYWORD) for v in iim.get((2, 25), [])) if k]
    if kws:
        out["XmpKeywords"] = list(dict.fromkeys(kws))[:MAX_KEYWORDS]
    out.update(_created(iim))
    return out


def _created(iim: dict[tuple[int, int], list[bytes]]) -> dict[str, str]:
    """2:55 DateCreated (CCYYMMDD) and 2:60 TimeCreated (HHMMSS±HHMM) as EXIF writes them."""
    d = _DATE.fullmatch(iim.get((2, 55), [b""])[0])
    if d is None or not (1 <= int(d[2]) <= 12 and 1 <= int(d[3]) <= 31):
        return {}
    t = _TIME.fullmatch(iim.get((2, 60), [b""])[0])
    hms = (b"00", b"00", b"00") if t is None else (t[1], t[2], t[3])
    if int(hms[0]) > 23 or int(hms[1]) > 59 or int(hms[2]) > 59:
        return {}
    out = {"DateTimeOriginal": b"%s:%s:%s %s:%s:%s" % (d[1], d[2], d[3], *hms)}
    if t is not None and t[4] and int(t[5]) <= 14 and int(t[6]) <= 59:
        out["OffsetTimeOriginal"] = b"%s%s:%s" % (t[4], t[5], t[6])
    return {k: v.decode() for k, v in out.items()}
