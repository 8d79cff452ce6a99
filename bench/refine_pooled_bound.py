"""A pooled bound against the per-tile one: the same refined output of the same base, its
blend weights chosen tile by tile (each tile within the bound, the shipped rule) or with the
image's error budget shared between tiles (:func:`choose_pooled` below), on the validation split
(never Kodak), PSNR and LPIPS-VGG only.

Two comparisons per photo and rate:
- ``matched``: the pooled choice given exactly the per-tile choice's squared error, so both
  have the same PSNR, and any LPIPS-VGG difference is what pooling buys at no fidelity cost;
- ``full``: the pooled choice given the whole budget of the bound (the image within
  ``bound`` dB of its base), against the per-tile choice at that bound.

No stream changes: the weights are the same indices, however chosen.

    python bench/refine_pooled_bound.py refine-avif --images 16 --rates 0.06,0.12,0.25,0.5 \
        --root /work/shared/data/train --split ../configs/validation-split.txt
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
import torch
from refine_grid import bound_arg, print_row, psnr_and_lpips, validation_bases
from refine_operating_points import load_codec_from, validation_args
from torch import Tensor

from cdc.refine.blend import grid, tile_sums

# -- the pooled allocation ------------------------------------------------------------------
# The per-tile bound lets no tile lose more than ``bound`` dB to its base, which also bounds
# the image; a tile where the refinement lowers the error leaves its share unused. Pooling
# asks only that the whole image stays within ``bound`` dB of its base,
#     Σ_tiles err_t(w_t) ≤ Σ_tiles err_t(0) · 10^(bound / 10),
# and spends the budget where it buys the most refinement per unit of squared error, with a
# looser per-tile ``cap``. A Lagrangian choice: for a price λ of squared error each tile takes
# the weight maximising gain − λ·err within its cap; the smallest λ whose total fits is found
# by bisection on log λ. Measured and not taken, so it lives here, not in cdc/.

GAINS = ("coverage", "energy")


def tile_errors(x: Tensor, base: Tensor, refined: Tensor, table: tuple[float, ...],
                tile: int) -> tuple[Tensor, Tensor, Tensor]:
    """(err, see, sdd): the (B, th, tw, K) squared-error sum of every table weight per tile,
    the base's (B, th, tw) error sum, and the refinement's (B, th, tw) energy (float64)."""
    x, base, refined = (t.double() for t in (x, base, refined))
    e, d = base - x, refined - base
    see, sed, sdd = tile_sums(e * e, tile), tile_sums(e * d, tile), tile_sums(d * d, tile)
    w = torch.tensor(table, dtype=torch.float64)
    err = see[..., None] + 2 * w * sed[..., None] + w * w * sdd[..., None]
    return err, see, sdd


def tile_pixels(height: int, width: int, tile: int) -> Tensor:
    """(th, tw) pixel counts of the tile grid (partial tiles at the right and bottom)."""
    th, tw = grid(height, width, tile)
    rows = torch.full((th,), float(tile), dtype=torch.float64)
    cols = torch.full((tw,), float(tile), dtype=torch.float64)
    rows[-1] = height - tile * (th - 1)
    cols[-1] = width - tile * (tw - 1)
    return rows[:, None] * cols[None, :]


def choose_pooled(x: Tensor, base: Tensor, refined: Tensor, table: tuple[float, ...],
                  tile: int, bound_db: float, cap_db: float | None = None,
                  gain: str = "coverage", budget: Tensor | None = None) -> Tensor:
    """(B, th, tw) weight indices whose image error stays within ``bound_db`` of the base's
    (or within ``budget``, a (B,) squared-error sum, when given), no tile more than
    ``cap_db`` over its own base error. ``gain``: what the budget buys — ``coverage``
    (weight × tile pixels: as much of the image refined as far as possible) or ``energy``
    (weight × the refinement's energy in the tile: where it changes the most)."""
    if gain not in GAINS:
        raise ValueError(f"gain must be one of {GAINS}, not {gain!r}")
    err, see, sdd = tile_errors(x, base, refined, table, tile)
    w = torch.tensor(table, dtype=torch.float64)
    if gain == "coverage":
        g = w * tile_pixels(*x.shape[-2:], tile)[None, ..., None]
    else:
        g = w * sdd[..., None]
    allowed = torch.ones_like(err, dtype=torch.bool)
    if cap_db is not None:
        allowed = err <= see[..., None] * 10 ** (cap_db / 10) * (1 + 1e-9)
    allowed[..., 0] = True
    limit = see.sum(dim=(1, 2)) * 10 ** (bound_db / 10) if budget is None else budget.double()
    out = []
    for b in range(err.shape[0]):
        out.append(_lagrangian(err[b], g[b], allowed[b], float(limit[b])))
    return torch.stack(out)


def _pick(err: Tensor, g: Tensor, allowed: Tensor, price: float) -> Tensor:
    score = torch.where(allowed, g - price * err, torch.tensor(-float("inf"),
                                                               dtype=torch.float64))
    return score.argmax(dim=-1)


def _total(err: Tensor, idx: Tensor) -> float:
    return float(err.gather(-1, idx[..., None]).sum())


def _lagrangian(err: Tensor, g: Tensor, allowed: Tensor, limit: float) -> Tensor:
    """The indices at the smallest price whose total error is within ``limit``."""
    free = _pick(err, g, allowed, 0.0)
    if _total(err, free) <= limit * (1 + 1e-12):
        return free
    # a price high enough that every tile takes its least-error weight: feasible, since
    # w = 0 (the base) is always allowed and the base alone is within any bound ≥ 0
    scale = float(g.abs().max()) / max(float(err[err > 0].min()) if (err > 0).any() else 1.0,
                                       1e-300)
    hi = max(scale, 1.0) * 1e6
    while _total(err, _pick(err, g, allowed, hi)) > limit * (1 + 1e-12) and hi < 1e300:
        hi *= 1e3
    lo = hi * 1e-40
    for _ in range(120):  # bisection on log λ
        mid = (lo * hi) ** 0.5
        if _total(err, _pick(err, g, allowed, mid)) <= limit * (1 + 1e-12):
            hi = mid
        else:
            lo = mid
    return _pick(err, g, allowed, hi)


# -- the bench ------------------------------------------------------------------------------


def schemes(caps: list[float | None]) -> list[tuple[str, str, float | None, str]]:
    """(column, budget kind, cap, gain) of every pooled variant measured."""
    out = []
    for kind in ("matched", "full"):
        for gain in ("coverage", "energy"):
            for cap in caps:
                out.append((f"{kind}_{gain}_cap{cap}", kind, cap, gain))
    return out


def _show(blend, base, ref, cfg, idx):
    """The blend a decoder of the weight indices ``idx`` shows."""
    h, w = base.shape[-2:]
    return blend.apply(base, ref, blend.weight_map(idx, cfg.table, cfg.tile, h, w))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name")
    validation_args(ap, 16)
    ap.add_argument("--rates", default="0.06,0.12,0.25,0.5")
    ap.add_argument("--path", default="1,0,0", help="steps,gamma,seed of the decode path")
    ap.add_argument("--caps", default="1.5,3", help="per-tile caps (dB; 'none' for none)")
    bound_arg(ap)
    ap.add_argument("--out", default="", help="a JSON file for the rows and summary")
    a = ap.parse_args()

    from cdc.refine import blend
    from pipeline.metrics.lpips import LPIPS

    codec, step = load_codec_from(a.model)
    cfg = codec.config
    steps, gamma, seed = (f(v) for f, v in zip((int, float, int), a.path.split(",")))
    bound = cfg.bound_for(gamma) if a.bound is None else a.bound
    caps = [None if c == "none" else float(c) for c in a.caps.split(",")]
    measure = functools.partial(psnr_and_lpips, LPIPS("vgg"))
    table = torch.tensor(cfg.table)
    print(f"# {a.model} (step {step}), path {a.path} at {bound} dB, caps {caps}", flush=True)
    rows = []
    for name, rate, x, base in validation_bases(a, codec):
        ref = codec.refine(base, steps, gamma, seed)
        row = {"image": name, "rate": rate}
        row["psnr_base"], row["lpips_vgg_base"] = measure(base, x)
        idx = blend.choose(x, base, ref, cfg.table, cfg.tile, bound)
        err, _, _ = tile_errors(x, base, ref, cfg.table, cfg.tile)
        spent = err.gather(-1, idx[..., None]).sum(dim=(1, 2, 3))
        show = functools.partial(_show, blend, base, ref, cfg)
        row["psnr_tile"], row["lpips_vgg_tile"] = measure(show(idx), x)
        row["w_tile"] = float(table[idx].mean())
        for col, kind, cap, gain in schemes(caps):
            i = choose_pooled(x, base, ref, cfg.table, cfg.tile, bound, cap, gain,
                                     budget=spent if kind == "matched" else None)
            row[f"psnr_{col}"], row[f"lpips_vgg_{col}"] = measure(show(i), x)
            row[f"w_{col}"] = float(table[i].mean())
        rows.append(row)
        print_row(row)
    summary = {"model": a.model, "step": step, "path": a.path, "bound_db": bound, "rows": rows}
    for rate in sorted({r["rate"] for r in rows}):
        rs = [r for r in rows if r["rate"] == rate]
        lt = np.mean([r["lpips_vgg_tile"] for r in rs])
        print(f"rate {rate:g}: tile PSNR {np.mean([r['psnr_tile'] for r in rs]):.3f} LPIPS-VGG "
              f"{lt:.4f} w {np.mean([r['w_tile'] for r in rs]):.3f}", flush=True)
        for col, *_ in schemes(caps):
            dp = [r[f"psnr_{col}"] - r["psnr_tile"] for r in rs]
            lv = np.mean([r[f"lpips_vgg_{col}"] for r in rs]) / lt
            summary[f"{rate:g}_{col}"] = {"d_psnr": float(np.mean(dp)),
                                          "d_psnr_worst": float(np.min(dp)),
                                          "lpips_vgg_ratio": float(lv)}
            print(f"  {col:28s} PSNR {np.mean(dp):+.3f} dB (worst {np.min(dp):+.3f}), "
                  f"LPIPS-VGG x{lv:.4f}, w {np.mean([r[f'w_{col}'] for r in rs]):.3f}",
                  flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
