"""Chunked bitstream archives: zarr v3 groups on local disk or any fsspec store.

One archive per compressed collection, addressed by URL (path, ``file://``, ``memory://``,
``s3://``, ``gs://``), written shard by shard by many workers and read lazily one record
at a time. This package knows bytes and records; it never imports torch or the codec.
See docs/storage.md for the layout and the rules.
"""

from .archive import Archive
from .errors import (
    ArchiveError,
    ArchiveExistsError,
    ArchiveNotFoundError,
    BadKeyError,
    CorruptArchiveError,
    DuplicateKeyError,
    FormatVersionError,
    ModelMismatchError,
    NotAnArchiveError,
    ReadOnlyArchiveError,
    RecordNotFoundError,
    ShardCompleteError,
    ShardFullError,
    ShardTakenError,
    StoreAccessError,
    UnknownTierError,
)
from .keys import check_key, key_problem
from .layout import FORMAT_VERSION
from .records import STATUS_FAILED, STATUS_OK, Record, RecordInfo
from .writer import ShardWriter

__all__ = [
    "FORMAT_VERSION",
    "STATUS_FAILED",
    "STATUS_OK",
    "Archive",
    "ArchiveError",
    "ArchiveExistsError",
    "ArchiveNotFoundError",
    "BadKeyError",
    "CorruptArchiveError",
    "DuplicateKeyError",
    "FormatVersionError",
    "ModelMismatchError",
    "NotAnArchiveError",
    "ReadOnlyArchiveError",
    "Record",
    "RecordInfo",
    "RecordNotFoundError",
    "ShardCompleteError",
    "ShardFullError",
    "ShardTakenError",
    "ShardWriter",
    "StoreAccessError",
    "UnknownTierError",
    "check_key",
    "key_problem",
]
