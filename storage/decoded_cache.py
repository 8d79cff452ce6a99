"""The archive's cache area of decoded images: plain objects under ``cache/``.

Entries are keyed by record key, tier and the tier's current settings (paths in
:mod:`storage.cache`), so changing a tier's settings makes its old entries unreachable
instead of stale. The cache is an optimisation; the records stay the truth.
"""

from __future__ import annotations

from .attributes import ArchiveAttributes
from .backend import Location, run
from .cache import cache_key
from .group import update_attrs
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
        """A decoded image cached for ``(key, tier)``, or None. No request at all when the
        attributes say nothing was ever cached (``decoded_cache: false``, as this process
        opened the archive; archives made before that flag are always asked)."""
        check_key(key, self.url)
        path = self._key(key, tier)
        if self._attributes.doc.get("decoded_cache") is False:
            return None
        return run(self._loc.get(path))

    def put(self, key: str, tier: str, data: bytes | bytearray | memoryview) -> None:
        """Cache a decoded image (e.g. PNG bytes); overwrites, atomic per entry."""
        check_key(key, self.url)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"cache_put takes bytes, got {type(data).__name__}")
        path = self._key(key, tier)
        if self._attributes.doc.get("decoded_cache") is False:
            stored = update_attrs(self._loc, lambda d: {**d, "decoded_cache": True})
            self._attributes.doc = {**stored, "decoded_cache": True}
        run(self._loc.set(path, bytes(data)))

    def clear(self, tier: str | None = None) -> None:
        """Drop the cache of one tier (any settings), or the whole cache."""
        prefix = CACHE_DIR if tier is None else f"{CACHE_DIR}/{check_tier_id(tier, self.url)}"
        run(self._loc.store.delete_dir(prefix))
