"""The model zoo: shipped weights, loading by name, path or URL, digest checks.

The only package that reads model files (``cdc`` turns bytes into models). Shipped
models live in ``zoo/weights/`` with ``zoo/models.json`` as the registry; the frozen
pretrained components (TAEF2) beside them, checked by sha256 (NOTICE).

The registry functions (:mod:`zoo.store`) and the local model cache (:mod:`zoo.cache`:
non-shipped weights found again by the digest a stream carries) import no torch; the
loaders are imported on first use, so ``cdc info`` and ``cdc models`` name a model without
loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from zoo.cache import find_model
from zoo.store import (
    default_model,
    read_verified_bytes,
    registry,
    sha256_hex,
    ship_weights,
    shipped_by_digest,
)

_LAZY = {
    "LoadedModel": "zoo.loader", "codec_from_bytes": "zoo.loader", "load_codec": "zoo.loader",
    "codec_for_stream": "zoo.loader",
    "load_weights": "zoo.loader", "component_bytes": "zoo.components",
    "component_states": "zoo.components", "load_space": "zoo.components",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["LoadedModel", "codec_for_stream", "codec_from_bytes", "component_bytes",
           "component_states", "default_model", "find_model", "load_codec", "load_space",
           "load_weights", "read_verified_bytes", "registry", "sha256_hex", "ship_weights",
           "shipped_by_digest"]
