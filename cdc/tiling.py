"""Run a local network tile by tile without seams (torch tensors or numpy arrays; no torch
import here, so the ONNX decoder shares it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def tiled(fn: Callable[[Any], Any], x: Any, tile: int, margin: int, in_unit: int,
          out_unit: int) -> Any:
    """Apply a *local* network ``fn`` tile by tile; equal to ``fn(x)`` up to float rounding.

    ``x`` is (B, C, H, W), a torch tensor or a numpy array. ``in_unit`` input pixels map to
    ``out_unit`` output pixels (8→1 for the encoder's trunk, 1→8 for the decoder's tail);
    ``tile`` and ``margin`` are in input pixels and multiples of ``in_unit``; ``margin`` must
    exceed the receptive field's radius.
    """
    h, w = x.shape[-2:]
    if whole(h, w, tile, margin):
        return fn(x)
    out = None
    s = out_unit / in_unit
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            a, b = max(0, y0 - margin), max(0, x0 - margin)
            part = fn(x[..., a:min(h, y1 + margin), b:min(w, x1 + margin)])
            if out is None:
                shape = (*part.shape[:2], int(h * s), int(w * s))
                out = part.new_empty(shape) if hasattr(part, "new_empty") else \
                    _numpy_empty(shape, part.dtype)
            oy, ox = int((y0 - a) * s), int((x0 - b) * s)
            oh, ow = int((y1 - y0) * s), int((x1 - x0) * s)
            out[..., int(y0 * s):int(y0 * s) + oh, int(x0 * s):int(x0 * s) + ow] = \
                part[..., oy:oy + oh, ox:ox + ow]
    assert out is not None
    return out


def whole(h: int, w: int, tile: int, margin: int) -> bool:
    """Whether :func:`tiled` runs ``fn`` on the whole input: when it has no more pixels than
    one tile with its margins (the same peak memory, and no margin recomputed: 17 % of a
    768×512 decode's tail with 64-px tiles split in two)."""
    return h * w <= (tile + 2 * margin) ** 2


def call_area(h: int, w: int, tile: int, margin: int) -> int:
    """The most input pixels one call of ``fn`` sees in :func:`tiled` (memory estimates)."""
    if whole(h, w, tile, margin):
        return h * w
    side = tile + 2 * margin
    return min(h, side) * min(w, side)


def _numpy_empty(shape: tuple[int, ...], dtype: Any) -> Any:
    import numpy as np

    return np.empty(shape, dtype)
