"""Exceptions raised by :mod:`storage`.

Every error derives from :class:`ArchiveError` so a job can catch one type; each message
names the archive URL and the key or shard involved, because the person reading it is
usually looking at a job log hours later, not at the code.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base class of every error raised by the storage package."""


class NotAnArchiveError(ArchiveError):
    """The URL holds nothing, or something that is not a cdc archive."""


class ArchiveNotFoundError(NotAnArchiveError):
    """Nothing at all is stored at the URL (and the store answered): an archive can be
    created there. Raised by ``Archive.open``; "holds other data" is a plain
    :class:`NotAnArchiveError`."""


class StoreAccessError(ArchiveError):
    """The store cannot be used as asked; ``reason`` says why: ``"no-bucket"`` (the
    bucket does not exist), ``"credentials"`` (the server refused the key or signature),
    ``"unreachable"`` (no connection to the endpoint), ``"denied"`` (the credentials may
    not read, or not write: a read-only bucket), ``"other"``."""

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message, reason)  # both in args, so the error pickles (Ray)
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ArchiveExistsError(ArchiveError):
    """``Archive.create`` was pointed at a URL that already holds data (never overwritten)."""


class FormatVersionError(ArchiveError):
    """The archive was written by a newer format version than this code can read."""


class ModelMismatchError(ArchiveError):
    """The archive's model weights digest differs from the codec in hand."""


class CorruptArchiveError(ArchiveError):
    """A chunk, shard index, manifest or record is missing or does not match its checksum."""


class BadKeyError(ArchiveError, ValueError):
    """A record key (or tier id) that is empty, malformed or would escape the archive."""


class RecordNotFoundError(ArchiveError, KeyError):
    """No completed shard holds the key."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateKeyError(ArchiveError):
    """The same key was written twice (in one shard, or in several shards)."""


class ShardTakenError(ArchiveError):
    """Another writer holds the claim on this shard (or took it over from this writer)."""


class ShardCompleteError(ArchiveError):
    """A completed shard was re-written with different content; the stored shard is kept."""


class ShardFullError(ArchiveError, ValueError):
    """A shard would exceed its record count or byte capacity."""


class ReadOnlyArchiveError(ArchiveError):
    """A write was attempted on an archive opened with ``read_only=True``."""


class UnknownTierError(ArchiveError, KeyError):
    """The quality tier id is not in the archive's tiers."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
