"""DiffC (Theis et al., "Lossy Compression with Gaussian Diffusion"): progressive streams.

An unconditional diffusion prior (:mod:`cdc.diffc.model`), reverse-channel coding of
each reverse step (:mod:`cdc.diffc.rcc`), a prefix-decodable stream layout
(:mod:`cdc.diffc.stream`) and the codec (:mod:`cdc.diffc.codec`).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {name: "cdc.diffc.model" for name in ("DIFFC_CONFIGS", "DiffCConfig", "DiffusionPrior")}


def __getattr__(name: str) -> Any:  # lazy: cdc.diffc.stream (cdc info) needs no torch
    if name not in _LAZY:
        raise AttributeError(f"module 'cdc.diffc' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = ["DIFFC_CONFIGS", "DiffCConfig", "DiffusionPrior"]
