"""The on-disk layout of an archive, in one place (see docs/storage.md).

Why this shape: a writer owns a *whole shard* and nothing else, because concurrent writers
to different chunks of one zarr shard lose data (zarr rewrites shards read-modify-write).
So every array is chunked so that writer shard ``k`` maps to exactly one storage object per
array: row arrays get one chunk of ``shard_size`` rows, the payload gets one zarr shard
(row ``k`` of a 2-D uint8 array). Only spec'd v3 types and codecs are used for the payload
(``uint8``, ``bytes``, ``sharding_indexed``, ``crc32c``), so any zarr v3 reader can read an
archive without this package; keys and errors use the ``string`` data type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np

from .errors import CorruptArchiveError

FORMAT_NAME = "cdc-toolkit/archive"
FORMAT_VERSION = 1
ATTRS_KEY = "cdc_archive"

PAYLOAD = "bitstream"
# Per-record arrays: name -> (zarr data type, fill value).
ROW_ARRAYS: dict[str, tuple[str, Any]] = {
    "key": ("string", ""),
    "status": ("uint8", 0),
    "height": ("uint32", 0),
    "width": ("uint32", 0),
    "checksum": ("uint32", 0),
    "offset": ("int64", 0),
    "nbytes": ("int64", 0),
    "error": ("string", ""),
}
MANIFEST_DIR = "manifest"
CLAIMS_DIR = "claims"
CACHE_DIR = "cache"
INDEX_DIR = "index"  # key tables (storage.keytable): derived, rebuildable
META_DIR = "meta"  # per-shard record metadata (storage.record_meta), where a shard has any

DEFAULT_SHARD_SIZE = 256
DEFAULT_MAX_SHARDS = 2**20
DEFAULT_CHUNK_BYTES = 64 * 1024
DEFAULT_BYTES_PER_RECORD = 128 * 1024  # budget used to size max_shard_bytes by default
MAX_INNER_CHUNKS = 1 << 16  # keeps the shard index (16 B per inner chunk) small

_EMPTY = np.uint64(2**64 - 1)


@dataclass(frozen=True)
class Layout:
    """An archive's fixed geometry (``attributes.cdc_archive.layout``), read once at open
    and shared by the parts that address rows and payload bytes."""

    shard_size: int
    max_shards: int
    chunk_bytes: int
    max_shard_bytes: int

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], url: str) -> Layout:
        lay = attrs.get("layout", {})
        try:
            return cls(
                shard_size=int(lay["shard_size"]),
                max_shards=int(lay["max_shards"]),
                chunk_bytes=int(lay["chunk_bytes"]),
                max_shard_bytes=int(lay["max_shard_bytes"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptArchiveError(f"{url}: layout attributes are incomplete ({e!r})") from e

    @property
    def n_inner(self) -> int:
        """Inner chunks per payload shard (entries of its shard index)."""
        return self.max_shard_bytes // self.chunk_bytes

    @property
    def rows(self) -> int:
        """Length of every row array."""
        return self.max_shards * self.shard_size

    def first_row(self, shard: int) -> int:
        return shard * self.shard_size


def manifest_key(shard: int) -> str:
    return f"{MANIFEST_DIR}/{shard:08d}.json"


def meta_key(shard: int) -> str:
    return f"{META_DIR}/{shard:08d}.json"


def claim_key(shard: int) -> str:
    return f"{CLAIMS_DIR}/{shard:08d}.json"


def shard_from_name(key: str) -> int | None:
    """``manifest/00000042.json`` -> 42; anything else -> None (ignored)."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".json") or not name[:-5].isdigit():
        return None
    return int(name[:-5])


def default_max_shard_bytes(shard_size: int, chunk_bytes: int) -> int:
    want = max(shard_size * DEFAULT_BYTES_PER_RECORD, 16 * chunk_bytes)
    return -(-want // chunk_bytes) * chunk_bytes


def payload_codecs_expected(chunk_bytes: int) -> list[dict[str, Any]]:
    """The exact codec chain ``read_prefix``'s direct range reads rely on."""
    return [
        {
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": [1, chunk_bytes],
                "codecs": [{"name": "bytes"}],
                "index_codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "crc32c"},
                ],
                "index_location": "end",
            },
        }
    ]


def index_nbytes(n_inner: int) -> int:
    return n_inner * 16 + 4


def parse_shard_index(raw: bytes, n_inner: int) -> np.ndarray:
    """Decode a sharding_indexed index (at the end of the shard object).

    Returns an ``(n_inner, 2)`` uint64 array of (offset, nbytes); missing inner chunks are
    ``2**64-1`` in both columns. Raises ValueError when the size or CRC32C is wrong.
    """
    if len(raw) != index_nbytes(n_inner):
        raise ValueError(f"shard index is {len(raw)} bytes, expected {index_nbytes(n_inner)}")
    body, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
    if google_crc32c.value(body) != crc:
        raise ValueError("shard index CRC32C mismatch")
    return np.frombuffer(body, dtype="<u8").reshape(n_inner, 2)


def inner_chunk_missing(entry: np.ndarray) -> bool:
    return bool(entry[0] == _EMPTY and entry[1] == _EMPTY)
