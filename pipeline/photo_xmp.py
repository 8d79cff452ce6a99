"""The curation a photographer adds in XMP (rating, colour label, title, caption, keywords),
read from a photo and written back as a minimal XMP packet.

Why: Lightroom, Apple Photos, digiKam and darktable keep ratings and keywords in the file's
XMP packet, not in EXIF; an archive that kept only EXIF would lose that work. Only these
five properties are kept (:data:`FIELDS`), the rest of the packet (editing history, tool
settings: often tens of KB) is not.

A packet comes from the file, so it is parsed defensively: at most :data:`MAX_PACKET`
bytes, no DOCTYPE (entity definitions need one: no entity expansion), anything that does
not parse is ignored. Nothing here imports torch.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from PIL import Image

MAX_PACKET = 256 * 1024
MAX_KEYWORDS, MAX_KEYWORD = 64, 128
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_DC = "http://purl.org/dc/elements/1.1/"
_XMP = "http://ns.adobe.com/xap/1.0/"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
#: Stored name -> (namespace, property): the XMP properties kept.
FIELDS = {"XmpRating": (_XMP, "Rating"), "XmpLabel": (_XMP, "Label"),
          "XmpTitle": (_DC, "title"), "XmpDescription": (_DC, "description"),
          "XmpKeywords": (_DC, "subject")}
#: The JPEG APP1 identifier of an XMP packet, and PNG's iTXt keyword for one.
JPEG_XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
PNG_XMP_KEY = "XML:com.adobe.xmp"


def packet_of(img: Image.Image) -> bytes:
    """The XMP packet a file carried, as Pillow and pillow-heif expose it (``b""``: none)."""
    raw = img.info.get("xmp") or img.info.get(PNG_XMP_KEY)
    if raw is None and hasattr(img, "tag_v2"):
        raw = img.tag_v2.get(700)  # TIFF
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    return raw if isinstance(raw, bytes) else b""


def _text(v: str | None, limit: int) -> str | None:
    v = " ".join((v or "").split())
    return v if 0 < len(v) <= limit and v.isprintable() else None


def _values(desc: ET.Element, ns: str, name: str) -> list[str]:
    """A property's values: an attribute, a simple element, or rdf:Alt/Bag/Seq items."""
    attr = desc.get(f"{{{ns}}}{name}")
    if attr is not None:
        return [attr]
    el = desc.find(f"{{{ns}}}{name}")
    if el is None:
        return []
    items = el.findall(f"{{{_RDF}}}*/{{{_RDF}}}li")
    if not items:
        return [el.text or ""]
    default = [li for li in items if li.get(_XML_LANG) == "x-default"]
    return [li.text or "" for li in (default or items)]


def read_xmp(packet: bytes, max_text: int) -> dict[str, Any]:
    """The kept properties of an XMP packet (``{}`` where it has none or cannot be read)."""
    if not packet or len(packet) > MAX_PACKET or b"<!DOCTYPE" in packet or b"<!ENTITY" in packet:
        return {}
    start, end = packet.find(b"<x:xmpmeta"), packet.rfind(b"</x:xmpmeta>")
    body = packet[start:end + len(b"</x:xmpmeta>")] if 0 <= start < end else packet
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return {}
    out: dict[str, Any] = {}
    for desc in root.iter(f"{{{_RDF}}}Description"):
        for name, (ns, prop) in FIELDS.items():
            vals = _values(desc, ns, prop)
            if not vals or name in out:
                continue
            if name == "XmpRating":
                try:
                    r = int(float(vals[0]))
                except ValueError:
                    continue
                if -1 <= r <= 5:
                    out[name] = r
            elif name == "XmpKeywords":
                kws = [k for k in (_text(v, MAX_KEYWORD) for v in vals) if k]
                if kws:
                    out[name] = list(dict.fromkeys(kws))[:MAX_KEYWORDS]
            elif (t := _text(vals[0], max_text)) is not None:
                out[name] = t
    return out


def valid(name: str, v: Any, max_text: int) -> bool:
    """Whether a stored value is one :func:`read_xmp` could have made."""
    if name == "XmpRating":
        return isinstance(v, int) and not isinstance(v, bool) and -1 <= v <= 5
    if name == "XmpKeywords":
        return (isinstance(v, list) and 0 < len(v) <= MAX_KEYWORDS
                and all(isinstance(k, str) and _text(k, MAX_KEYWORD) == k for k in v))
    return isinstance(v, str) and _text(v, max_text) == v


def xmp_packet(meta: Mapping[str, Any]) -> bytes:
    """The kept XMP properties of ``meta`` as a minimal packet (``b""`` where none)."""
    held = {k: meta[k] for k in FIELDS if k in meta}
    if not held:
        return b""
    attrs, elems = [], []
    if "XmpRating" in held:
        attrs.append(f"xmp:Rating={quoteattr(str(held['XmpRating']))}")
    if "XmpLabel" in held:
        attrs.append(f"xmp:Label={quoteattr(held['XmpLabel'])}")
    for name, prop in (("XmpTitle", "title"), ("XmpDescription", "description")):
        if name in held:
            elems.append(f'<dc:{prop}><rdf:Alt><rdf:li xml:lang="x-default">'
                         f"{escape(held[name])}</rdf:li></rdf:Alt></dc:{prop}>")
    if "XmpKeywords" in held:
        lis = "".join(f"<rdf:li>{escape(k)}</rdf:li>" for k in held["XmpKeywords"])
        elems.append(f"<dc:subject><rdf:Bag>{lis}</rdf:Bag></dc:subject>")
    desc = (f'<rdf:Description rdf:about="" xmlns:xmp="{_XMP}" xmlns:dc="{_DC}" '
            + " ".join(attrs) + ">" + "".join(elems) + "</rdf:Description>")
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{_RDF}">{desc}'
            '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()
