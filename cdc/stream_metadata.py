"""A photo's metadata in a single stream file: section ``M`` after the codec's sections.

An archive keeps each photo's capture metadata beside its record; a stream written on its own
(``cdc compress``) had nowhere to keep it, so a photo compressed and decompressed came back
without its date, camera and place. ``M`` holds it (deflated JSON, at most
:data:`MAX_JSON_BYTES` inflated, :data:`MAX_DEFLATED` stored) as the **last section**, before
the trailer CRC, which covers it like every other byte.

The codecs never see it: :func:`detach` takes it off at the file boundary (``cdc decompress``,
``cdc info``, :func:`pipeline.stream_file.read_stream`) and gives back the codec's stream with its
trailer recomputed, byte for byte the stream the codec wrote. A prefix (DiffC's, or refine's
base layer) that ends inside or before ``M`` is cut where ``M`` begins, so prefixes decode as
before. What ``M`` claims is checked before it is inflated. A toolkit from before 2026-12-08
refuses a file that has ``M`` (its parsers expect only their own sections); ``cdc compress
--metadata none`` writes none. Nothing here imports torch.
"""

from __future__ import annotations

import struct
import zlib

from cdc.bitstream import read_header, read_varint, write_varint
from cdc.errors import CorruptStreamError

META_TAG = "M"
#: Metadata JSON is at most this long (as ``pipeline.photo_metadata.MAX_JSON_BYTES``).
MAX_JSON_BYTES = 4096
#: A stored section longer than this is refused before it is inflated.
MAX_DEFLATED = 8192


def _crc(data: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


def _complete(data: bytes) -> bool:
    return len(data) > 4 and _crc(data[:-4]) == data[-4:]


def section_bytes(meta_json: bytes) -> int:
    """What :func:`attach` adds to a stream for ``meta_json``: tag, length and payload (0
    when there is nothing to attach), so a rate target can leave room for it."""
    if not meta_json:
        return 0
    n = len(zlib.compress(meta_json, 9))
    return 1 + len(write_varint(n)) + n


def attach(stream: bytes, meta_json: bytes) -> bytes:
    """A complete stream with ``meta_json`` (UTF-8 JSON) in section ``M``; the stream as it is
    when there is nothing to attach. ValueError for an incomplete stream (a capped DiffC
    prefix has no trailer to keep ``M`` under), one that has ``M`` already, or metadata over
    :data:`MAX_JSON_BYTES`."""
    if not meta_json:
        return stream
    if len(meta_json) > MAX_JSON_BYTES:
        raise ValueError(f"metadata is {len(meta_json)} bytes, over {MAX_JSON_BYTES}")
    if not _complete(stream):
        raise ValueError("metadata goes into a complete stream only, not a prefix")
    if _walk(stream[:-4]) is not None:
        raise ValueError("the stream has a metadata section already")
    payload = zlib.compress(meta_json, 9)
    body = stream[:-4] + META_TAG.encode() + write_varint(len(payload)) + payload
    return body + _crc(body)


def detach(data: bytes) -> tuple[bytes, bytes | None]:
    """(the codec's stream, the metadata JSON or None) of a file's bytes: a complete stream
    with ``M`` comes back without it and with its trailer recomputed; a prefix is cut where
    ``M`` begins; anything else comes back as it is, for the codec to judge.
    ``CorruptStreamError`` where ``M`` is not last, is too long, does not inflate, or the
    file's checksum fails where ``M`` is whole."""
    data = bytes(data)
    if not _complete(data):
        found = _walk(data)
        if found is None:
            return data, None
        start, end = found
        if end + 4 <= len(data):  # M is whole, so this was a whole file: it is damaged
            raise CorruptStreamError("stream checksum mismatch (corrupted or truncated)")
        return data[:start], None  # a prefix that reaches into M
    body = data[:-4]
    found = _walk(body)
    if found is None:
        return data, None
    start, end = found
    if end != len(body):
        raise CorruptStreamError("section 'M' (metadata) must be the last section")
    pos = start + 1
    size, pos = read_varint(body, pos, end)
    if size > MAX_DEFLATED:
        raise CorruptStreamError(f"section 'M' claims {size} bytes, over {MAX_DEFLATED}")
    meta = _inflate(body[pos:end])
    return body[:start] + _crc(body[:start]), meta


def _inflate(payload: bytes) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, MAX_JSON_BYTES + 1)
    except zlib.error as e:
        raise CorruptStreamError(f"section 'M' (metadata) does not inflate ({e})") from None
    if len(out) > MAX_JSON_BYTES or d.unconsumed_tail or not d.eof or d.unused_data:
        raise CorruptStreamError(f"section 'M' (metadata) is not {MAX_JSON_BYTES} bytes or "
                                 "fewer of deflated data")
    return out


def _walk(data: bytes) -> tuple[int, int] | None:
    """Walk the sections after the header: ``(start, end)`` of the first ``M`` section (its
    end may lie past ``data`` in a prefix), or None when there is none within ``data`` (a
    prefix may end inside an earlier section)."""
    h = read_header(data, validate=False)
    pos, n = h.end, len(data)
    while pos < n:
        tag = data[pos]
        try:
            size, p = read_varint(data, pos + 1, n)
        except CorruptStreamError:
            return (pos, n + 1) if tag == ord(META_TAG) else None
        if tag == ord(META_TAG):
            return pos, p + size
        if p + size > n:
            return None  # a prefix that ends inside this section
        pos = p + size
    return None
