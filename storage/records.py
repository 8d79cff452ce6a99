"""Record types and the per-shard digests that make commits verifiable and idempotent."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STATUS_OK = "ok"
STATUS_FAILED = "failed"
# Stored as uint8; 0 is the fill value and means "no record in this row".
STATUS_CODES: dict[str, int] = {STATUS_OK: 1, STATUS_FAILED: 2}
STATUS_NAMES: dict[int, str] = {v: k for k, v in STATUS_CODES.items()}
MAX_SIDE = 2**31 - 1
#: Bound on one record's metadata as compact JSON (checked when written and when read).
MAX_RECORD_META = 16 * 1024


def meta_json(meta: Mapping[str, Any]) -> str:
    """A record's metadata as the compact JSON whose size :data:`MAX_RECORD_META` bounds."""
    return json.dumps(dict(meta), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_record_meta(meta: Any, what: str) -> None:
    """Raise TypeError/ValueError unless ``meta`` is a JSON object within the bound."""
    if not isinstance(meta, Mapping):
        raise TypeError(f"{what} must be a mapping, got {type(meta).__name__}")
    try:
        size = len(meta_json(meta).encode())
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable ({e})") from e
    if size > MAX_RECORD_META:
        raise ValueError(f"{what} is {size} bytes of JSON, over {MAX_RECORD_META}")


@dataclass(frozen=True)
class Record:
    """One image: its key, compressed bitstream and original size.

    A failed image is still recorded (``status="failed"``, ``error`` set, usually no data)
    so that the job summary and the archive listing show it. ``meta`` is what the writer
    stores beside the record (a photo's capture metadata; a JSON object, see
    :mod:`storage.record_meta`); reads of the bitstream leave it empty, and
    ``Archive.metadata`` returns it.
    """

    key: str
    data: bytes = b""
    height: int = 0
    width: int = 0
    status: str = STATUS_OK
    error: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.data, (bytearray, memoryview)):
            object.__setattr__(self, "data", bytes(self.data))
        if not isinstance(self.data, bytes):
            raise TypeError(f"Record.data must be bytes, got {type(self.data).__name__}")
        if self.status not in STATUS_CODES:
            raise ValueError(
                f"Record.status must be one of {sorted(STATUS_CODES)}, got {self.status!r}"
            )
        for name in ("height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SIDE:
                raise ValueError(f"Record.{name} must be an int in [0, {MAX_SIDE}], got {v!r}")
        if not isinstance(self.error, str):
            raise TypeError(f"Record.error must be str, got {type(self.error).__name__}")
        if self.status == STATUS_OK and not self.data:
            raise ValueError(f"Record {self.key!r} has status 'ok' but no data")
        check_record_meta(self.meta, f"Record {self.key!r}'s meta")

    @classmethod
    def failed(cls, key: str, error: str, *, height: int = 0, width: int = 0,
               meta: Mapping[str, Any] | None = None) -> Record:
        """A record for an image the codec could not compress."""
        return cls(key=key, height=height, width=width, status=STATUS_FAILED, error=error,
                   meta=meta or {})

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def size(self) -> tuple[int, int]:
        """Original ``(height, width)``."""
        return (self.height, self.width)


@dataclass(frozen=True)
class RecordInfo:
    """A record's metadata and location, read without touching its payload."""

    key: str
    height: int
    width: int
    status: str
    error: str
    nbytes: int
    checksum: int
    shard: int
    row: int

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def checksum(data: bytes) -> int:
    """CRC-32 (zlib) of a bitstream: cheap, and catches torn or bit-flipped chunks."""
    return zlib.crc32(data) & 0xFFFFFFFF


_ROW = struct.Struct("<BIIIqq")


def rows_digest(
    keys: Sequence[str],
    status: Sequence[int],
    height: Sequence[int],
    width: Sequence[int],
    crc: Sequence[int],
    offset: Sequence[int],
    nbytes: Sequence[int],
    errors: Sequence[str],
) -> str:
    """SHA-256 over every stored field of every row of a shard.

    Written to the shard's manifest entry at commit and recomputed on read, so a chunk
    that went missing (zarr silently returns fill values for those) is detected.
    """
    h = hashlib.sha256()
    for i in range(len(keys)):
        kb = keys[i].encode("utf-8")
        eb = errors[i].encode("utf-8")
        h.update(len(kb).to_bytes(4, "little") + kb)
        h.update(
            _ROW.pack(
                int(status[i]),
                int(height[i]),
                int(width[i]),
                int(crc[i]),
                int(offset[i]),
                int(nbytes[i]),
            )
        )
        h.update(len(eb).to_bytes(4, "little") + eb)
    return "sha256:" + h.hexdigest()


def keys_digest(keys: Sequence[str]) -> str:
    """SHA-256 of the ordered key list: what a re-run of a shard must reproduce."""
    h = hashlib.sha256()
    for k in keys:
        kb = k.encode("utf-8")
        h.update(len(kb).to_bytes(4, "little") + kb)
    return "sha256:" + h.hexdigest()
