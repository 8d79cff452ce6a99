"""Where decoded images are cached inside an archive.

Layout: ``cache/<tier>/<settings-fingerprint>/<h[:2]>/<h[2:]>`` with ``h`` the SHA-256 of
the record key. Hashing keeps every key, whatever its characters or length, one safe path
(no escape, no file/directory clashes between ``a`` and ``a/b``). The fingerprint of the
tier's decode settings is part of the path, so changing a tier's settings makes its old
cache entries unreachable instead of silently serving images decoded the old way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .layout import CACHE_DIR


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cache_key(key: str, tier: str, settings: Mapping[str, Any]) -> str:
    h = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{CACHE_DIR}/{tier}/{settings_fingerprint(settings)}/{h[:2]}/{h[2:]}"
