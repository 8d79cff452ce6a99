"""The fidelity bound: per-tile blend weights the encoder chooses and the stream carries.

For each ``tile``×``tile`` block the encoder, which sees the original x, picks the largest
w in the table {0, 1/(n−1), …, 1} such that

    MSE_tile(base + w·(refined − base), x) ≤ MSE_tile(base, x) · 10^(bound_dB / 10),

so no tile, and hence no image, loses more than ``bound_dB`` of PSNR to its base layer
(w = 0 always qualifies).

The weights' bytes (section ``W``): :mod:`cdc.refine.weights_section`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cdc.refine.weights_section import (  # noqa: F401 - the section's names, here too
    DEFLATE,
    GAMMA_SCALE,
    RAW,
    W_VERSION,
    BlendPath,
    grid,
    pack,
    unpack,
)


def tile_sums(a: Tensor, tile: int) -> Tensor:
    """(B, C, H, W) → (B, th, tw) sums over each tile (partial tiles at the edges)."""
    b, c, h, w = a.shape
    th, tw = grid(h, w, tile)
    a = torch.nn.functional.pad(a, (0, tw * tile - w, 0, th * tile - h))
    return a.reshape(b, c, th, tile, tw, tile).sum(dim=(1, 3, 5))


def choose(x: Tensor, base: Tensor, refined: Tensor, table: tuple[float, ...], tile: int,
           bound_db: float) -> Tensor:
    """(B, th, tw) indices of the largest weight within the bound, per tile (float64 sums)."""
    x, base, refined = (t.double() for t in (x, base, refined))
    e = base - x
    d = refined - base
    see, sed, sdd = tile_sums(e * e, tile), tile_sums(e * d, tile), tile_sums(d * d, tile)
    limit = see * 10 ** (bound_db / 10)
    best = torch.zeros(see.shape, dtype=torch.long)
    for i, w in enumerate(table):  # error of base + w·d − x = e + w·d
        err = see + 2 * w * sed + w * w * sdd
        best = torch.where(err <= limit * (1 + 1e-9), torch.full_like(best, i), best)
    return best


def weight_map(indices: Tensor, table: tuple[float, ...], tile: int, height: int,
               width: int) -> Tensor:
    """(B, th, tw) indices → (B, 1, H, W) per-pixel weights."""
    w = torch.tensor(table, dtype=torch.float32)[indices]
    w = w.repeat_interleave(tile, dim=1).repeat_interleave(tile, dim=2)
    return w[:, None, :height, :width]


def apply(base: Tensor, refined: Tensor, weights: Tensor) -> Tensor:
    return base + weights.to(base.device) * (refined - base)


def bounded(x: Tensor, base: Tensor, refined: Tensor, table: tuple[float, ...], tile: int,
            bound_db: float) -> tuple[Tensor, Tensor]:
    """What the encoder does for one decode path: the (B, th, tw) weight indices within
    ``bound_db`` (:func:`choose`) and the blend a decoder of those indices shows."""
    h, w = x.shape[-2:]
    idx = choose(x, base, refined, table, tile, bound_db)
    return idx, apply(base, refined, weight_map(idx, table, tile, h, w))
