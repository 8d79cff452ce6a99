"""Opening the archive a job writes to, or creating it for the codec in hand.

An existing archive must have been written with the same codec and weights (else its
records would decode wrongly); a new one records the codec's decoding defaults and gets
its tier table from :mod:`pipeline.archive.codec_tiers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.archive.codec_adapter import codec_config, full_codec, weights_digest
from pipeline.archive.codec_tiers import check_codec_tiers, tiers_for
from pipeline.archive.planning import DEFAULT_SHARD_SIZE
from pipeline.archive.tier_settings import check_tiers
from storage import Archive, ArchiveError, ArchiveNotFoundError


def open_existing(url: str, codec: Any, *, storage_options: dict[str, Any] | None = None,
                  read_only: bool = False) -> Archive | None:
    """The archive at ``url`` if one is there (None: nothing stored), checked against
    ``codec``: the same weights and codec, else ArchiveError naming what it holds."""
    codec = full_codec(codec)
    try:
        arch = Archive.open(url, expected_digest=weights_digest(codec),
                            storage_options=storage_options, read_only=read_only)
    except ArchiveNotFoundError:
        return None  # nothing stored there (a missing path, an empty folder or prefix)
    if arch.codec_id != codec.codec_id:
        raise ArchiveError(f"{url}: holds {arch.codec_id!r} streams, not {codec.codec_id!r}")
    return arch


def open_or_create(url: str, codec: Any, *, shard_size: int = DEFAULT_SHARD_SIZE,
                   tiers: Mapping[str, Mapping[str, Any]] | None = None,
                   max_shard_bytes: int | None = None,
                   storage_options: dict[str, Any] | None = None,
                   info: Mapping[str, Any] | None = None) -> tuple[Archive, bool]:
    """Open the archive at ``url`` for ``codec`` (its model must match), or create it.

    "Absent" is :class:`storage.ArchiveNotFoundError` (nothing at all stored at ``url``);
    a URL that holds anything else is refused, untouched (``Archive.create`` checks again).
    Returns ``(archive, created)``. ``tiers`` (already validated) replace the defaults at
    creation, and are merged into an existing archive's tiers.
    """
    codec = full_codec(codec)
    if tiers:
        check_codec_tiers(codec, tiers)
    arch = open_existing(url, codec, storage_options=storage_options)
    if arch is not None:
        arch.check_writable()  # a read-only bucket: one line now, not a failed job later
        if tiers:
            new = check_tiers(tiers)
            if any(arch.tiers.get(k) != v for k, v in new.items()):
                arch.set_tiers(new)
        return arch, False
    arch = Archive.create(
        url, codec_id=codec.codec_id, model_id=codec.model_id,
        weights_digest=weights_digest(codec),
        codec_config=codec_config(codec),
        tiers=check_tiers(tiers_for(codec, tiers)), shard_size=shard_size,
        max_shard_bytes=max_shard_bytes, info=info, storage_options=storage_options,
    )
    return arch, True
