"""Single stream files (``cdc compress`` / ``cdc decompress``) with the photo's metadata.

An archive keeps a photo's capture metadata beside its record; a stream file keeps it in its
own last section (:mod:`cdc.stream_metadata`), so a photo compressed and decompressed comes
back with its date, camera, place and file time, as one fetched from an archive does. The
same policies as an archive's apply (``keep``, ``no-gps``, ``none``), and what a file claims
is checked as an archive's metadata is (:func:`pipeline.photo_metadata.check_metadata`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from PIL import Image

from cdc.stream_metadata import attach, detach, section_bytes
from pipeline.files import input_metadata, read_bytes
from pipeline.photo_metadata import (
    MetadataError,
    Policy,
    apply_policy,
    check_metadata,
    dumps,
    file_modified,
)


def photo_metadata(img: Image.Image, src: str | os.PathLike, policy: Policy) -> dict[str, Any]:
    """What a stream file keeps of a photo read from ``src``: its capture metadata and the
    file's time, as much as ``policy`` keeps (no digest: that serves an archive's lookups)."""
    return apply_policy({**input_metadata(img), **file_modified(os.fspath(src))}, policy)


def metadata_bytes(meta: dict[str, Any]) -> int:
    """Bytes ``meta`` adds to a stream file (its section): a rate target leaves room for it."""
    return section_bytes(dumps(meta).encode()) if meta else 0


def with_metadata(stream: bytes, meta: dict[str, Any]) -> tuple[bytes, bool]:
    """(the file's bytes, whether ``meta`` went in): a prefix-capped stream (DiffC under
    ``--rate``) has no trailer to keep it under, so it goes out bare."""
    if not meta:
        return stream, False
    try:
        return attach(stream, dumps(meta).encode()), True
    except ValueError:
        return stream, False


def read_stream(path: str | os.PathLike, policy: Policy = "keep"
                ) -> tuple[bytes, dict[str, Any]]:
    """(the codec's stream, the metadata ``policy`` keeps) of a stream file. Raises
    ``BitstreamError`` for a damaged metadata section, :class:`MetadataError` (naming the
    file) for metadata this toolkit does not write, ``InputError`` for an unreadable file."""
    stream, raw = detach(read_bytes(path))
    if raw is None or policy == "none":
        return stream, {}
    where = f"{os.fspath(path)}: metadata"
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MetadataError(f"{where} is not JSON") from None
    return stream, apply_policy(check_metadata(meta, where), policy)
