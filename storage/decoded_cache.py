"""The archive's cache area of decoded images: plain objects under ``cache/``.

Entries are keyed by record key, tier and the tier's current settings (paths in
:mod:`storage.cache`), so changing a tier's settings makes its old entries unreachable
instead of stale. The cache is an optimisation; the records stay the truth.
"""

from __future__ import annotations

from .attributes import ArchiveAttributes
from .backend import Location, run
from .cache import cache_key
from .keys import check_key, check_tier_id
from .layout import CACHE_DIR


class DecodedCache:
    """Get, put and clear cached decoded images; the caller checks writability."""

    def __init__(self, loc: Location, attributes: ArchiveAttributes) -> None:
        self._loc = loc
        self.url = loc.url
        self._attributes = attributes

    def _key(self, key: str, tier: str) -> str:
        return cache_key(key, tier, self._attributes.tier_settings(tier))

    def get(self, key: str, tier: str) -> bytes | None:
        """A decoded image cached for ``(key, tier)``, or None."""
        check_key(key, self.url)
        return run(self._loc.get(self._key(key, tier)))

    def put(self, key: str, tier: str, data: bytes | bytearray | memoryview) -> None:
        """Cache a decoded image (e.g. PNG bytes); overwrites, atomic per entry."""
        check_key(key, self.url)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"cache_put takes bytes, got {type(data).__name__}")
        run(self._loc.set(self._key(key, tier), bytes(data)))

    def clear(self, tier: str | None = None) -> None:
        """Drop the cache of one tier (any settings), or the whole cache."""
        prefix = CACHE_DIR if tier is None else f"{CACHE_DIR}/{check_tier_id(tier, self.url)}"
        run(self._loc.store.delete_dir(prefix))
