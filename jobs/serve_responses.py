"""What ``cdc serve``'s responses say: error lines without server paths, image ETags and
headers, tier order, server-side resizing.

Pure functions of their inputs (no Ray, no FastAPI app, no archive), kept apart from the
service in :mod:`jobs.serve` so the rules a client sees can be read, and tested, on their
own. Error bodies never name server paths: an archive's URL becomes its name, other paths
their last component (:func:`public_message`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import HTTPException
from PIL import Image

from pipeline.archive.tier_settings import settings_dict
from pipeline.files import encode_image
from storage import RecordInfo

#: Decoded images never change for one ETag, so clients may keep them for a year.
IMMUTABLE = "public, max-age=31536000, immutable"
NO_STORE = {"Cache-Control": "no-store"}
#: Part of every image ETag: bump it when the same inputs start giving other bytes (a new
#: resampling filter or image encoder settings).
ETAG_VERSION = 1

# an absolute path or a URL (scheme://...), up to the next blank, quote or bracket
_PATHLIKE = re.compile(r"(?:\b[A-Za-z][A-Za-z0-9+.\-]*://|(?<![\w.~-])/)[^\s'\"(),;<>]*")
_ARCHIVE_URLS: set[str] = set()  # this process's archives, for the module-level handlers


def remember_archive_urls(urls: Iterable[str]) -> None:
    """Name these archive URLs by their archive's name in every later
    :func:`public_message` of this process (the one a service replica serves)."""
    _ARCHIVE_URLS.update(urls)


def archive_name(url: str) -> str:
    """What responses call an archive: the last component of its URL, never its path."""
    tail = url.split("://", 1)[-1].split("?", 1)[0].rstrip("/")
    return tail.rsplit("/", 1)[-1] or "archive"


def public_message(text: str, urls: set[str] | None = None) -> str:
    """``text`` fit for an HTTP client: its first line, each archive URL in ``urls``
    replaced by the archive's name, and any other absolute path or URL by its last
    component (a client has no business knowing the server's folders)."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    line = (lines[0] + (" …" if len(lines) > 1 else "")) if lines else "error"
    for url in sorted(urls if urls is not None else _ARCHIVE_URLS, key=len, reverse=True):
        if url:
            line = line.replace(url, archive_name(url))
    return _PATHLIKE.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "…", line)


def failed_reason(key: str, error: str, urls: set[str] | None = None) -> str:
    """Why a record failed when it was archived, without the source file's path (the
    stored error usually starts with it: ``/photos/2024/cat.png: not an image file``)."""
    why = public_message(error or "unknown error", urls)
    head, sep, rest = why.partition(": ")
    if sep and rest and head in (key, key.rsplit("/", 1)[-1]):
        why = rest
    return why


def http_error(status: int, detail: str, headers: Mapping[str, str] | None = None
               ) -> HTTPException:
    """An error response (never cached) with a one-line ``detail``."""
    return HTTPException(status, detail, headers={**NO_STORE, **(headers or {})})


def image_etag(model_digest: str, info: RecordInfo, settings: Any, fmt: str,
               width: int | None) -> str:
    """A strong ETag for one decoded image, from metadata only (no payload read): the
    model digest, the key, the stored stream (its CRC and length), the explicit decode
    settings, the output format and width."""
    blob = json.dumps(
        {"v": ETAG_VERSION, "model": model_digest.lower().removeprefix("sha256:"),
         "key": info.key, "crc": info.checksum, "nbytes": info.nbytes,
         "settings": settings_dict(settings), "format": fmt, "width": width},
        sort_keys=True, separators=(",", ":"))
    return '"' + hashlib.sha256(blob.encode()).hexdigest()[:40] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 ``If-None-Match`` (weak comparison): ``*`` or any listed tag."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == etag for t in if_none_match.split(","))


def tier_order(tiers: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Tier names from cheapest to best: a prefix budget before the whole stream (smaller
    first), then fewer steps, then smaller γ."""
    def cost(name: str) -> tuple:
        t = tiers[name]
        bpp = t.get("bpp")
        return (bpp is None, bpp or 0.0, t.get("steps", 0), t.get("gamma", 0.0), name)

    return sorted(tiers, key=cost)


def resize_image(png: bytes, width: int, fmt: str) -> bytes:
    """``png`` scaled to ``width`` px wide (aspect kept), encoded as ``fmt``."""
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        height = max(1, round(im.height * width / im.width))
        small = im.resize((width, height), Image.Resampling.LANCZOS)
    return encode_image(small, fmt)


def image_headers(tier: str, settings: Any, info: RecordInfo, bytes_read: int, source: str,
                  batch: int, decode_s: float, server_s: float) -> dict[str, str]:
    """What an image response says about itself (the gallery's labels come from these)."""
    s = settings_dict(settings)
    pixels = max(1, info.width * info.height)
    return {
        "X-CDC-Source": source, "X-CDC-Batch-Size": str(batch), "X-CDC-Tier": tier,
        "X-CDC-Settings": f"steps={s['steps']},gamma={s['gamma']},seed={s['seed']}",
        "X-CDC-Steps": str(s["steps"]), "X-CDC-Gamma": str(s["gamma"]),
        "X-CDC-Seed": str(s["seed"]),
        "X-CDC-Bytes-Read": str(bytes_read),  # the stream bytes this image decodes from
        "X-CDC-Record-Bytes": str(info.nbytes),  # the whole stored stream
        "X-CDC-Bpp": f"{8 * bytes_read / pixels:.4f}",  # of the original size
        "X-CDC-Image-Size": f"{info.width}x{info.height}",
        "X-CDC-Decode-Ms": f"{decode_s * 1000:.1f}",  # 0 for a cache hit
        "X-CDC-Server-Ms": f"{server_s * 1000:.1f}",
    }
