"""Compare refine models (a candidate against the shipped one) tier by tier on the validation
split (never Kodak), as the user gets them: the same base layer, each model's refinement along
a tier's decode path, blended under the tier's PSNR bound.

Measured with PSNR and LPIPS-VGG only (LPIPS-Alex, DISTS and FID are for evaluation),
with the mean blend weight the bound let through (1: all of the refinement), and written as
2× crops to look at (original | base | each model's tiers), where the original has the most
detail. The first model is the reference of the per-row comparison.

    python bench/refine_ab.py refine-avif runs/refine-adv-1 --images 12 --rates 0.06,0.12 \
        --tiers standard:1:0:0.5,high:1:0.6:1.5 --out /tmp/ab
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import torch
from refine_grid import crop_panel, print_row, psnr_and_lpips, validation_bases
from refine_operating_points import load_codec_from, validation_args


def parse_tiers(text: str) -> list[tuple[str, int, float, float]]:
    """``name:steps:gamma:bound_db,…`` → [(name, steps, gamma, bound)]."""
    out = []
    for part in text.split(","):
        name, steps, gamma, bound = part.split(":")
        out.append((name, int(steps), float(gamma), float(bound)))
    return out


def detailed_box(x: torch.Tensor, size: int) -> tuple[int, int, int]:
    """The (top, left, size) window with the most high-frequency energy in the original."""
    g = x.mean(0)
    lap = (4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).abs()
    h, w = g.shape
    s = min(size, h - 2, w - 2)
    best, box = -1.0, (0, 0, s)
    for top in range(0, h - 2 - s + 1, max(1, s // 4)):
        for left in range(0, w - 2 - s + 1, max(1, s // 4)):
            e = float(lap[top:top + s, left:left + s].mean())
            if e > best:
                best, box = e, (top + 1, left + 1, s)
    return box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="run folders, relay folders or model names")
    validation_args(ap, 6)
    ap.add_argument("--rates", default="0.06,0.12")
    ap.add_argument("--tiers", default="standard:1:0:0.5,high:1:0.6:1.5",
                    help="name:steps:gamma:bound_db, comma-separated")
    ap.add_argument("--crop", type=int, default=128, help="crop side before the 2× zoom")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    from cdc.refine import blend
    from pipeline.metrics.lpips import LPIPS

    codecs = [load_codec_from(m) for m in a.models]
    cfg = codecs[0][0].config
    for (c, _), m in zip(codecs, a.models):
        if (c.config.base_speed, c.config.base_subsampling, c.config.base_tune, c.config.tile,
                c.config.table) != (cfg.base_speed, cfg.base_subsampling, cfg.base_tune,
                                    cfg.tile, cfg.table):
            raise SystemExit(f"{m}: another base layer or tile table than {a.models[0]}")
    tiers = parse_tiers(a.tiers)
    print("# " + ", ".join(f"{m} (step {s})" for m, (_, s) in zip(a.models, codecs))
          + "; tiers " + a.tiers, flush=True)
    lp = LPIPS("vgg")
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    measure = functools.partial(psnr_and_lpips, lp)

    rows = []
    for name, rate, x, base in validation_bases(a, codecs[0][0]):
        h, w = x.shape[-2:]
        row = {"image": name, "rate": rate}
        row["base_psnr"], row["base_lpips_vgg"] = measure(base, x)
        shown = [x[0], base[0]]
        for k, (codec, _) in enumerate(codecs):
            for tier, steps, gamma, bound in tiers:
                ref = codec.refine(base, steps, gamma, 0)
                idx, y = blend.bounded(x, base, ref, cfg.table, cfg.tile, bound)
                row[f"m{k}_{tier}_psnr"], row[f"m{k}_{tier}_lpips_vgg"] = measure(y, x)
                # how much of the refinement the bound let through (1: all of it)
                row[f"m{k}_{tier}_weight"] = float(torch.tensor(cfg.table)[idx].mean())
                shown.append(y[0])
        rows.append(row)
        print_row(row)
        if out:
            crop_panel(shown, detailed_box(x[0], a.crop)).save(
                out / f"{Path(name).stem}_{rate:g}.png")
    summary: dict = {"models": a.models, "steps": [s for _, s in codecs], "tiers": a.tiers,
                     "rows": rows, "panel_order": ["original", "base"] + [
                         f"m{k}:{t[0]}" for k in range(len(codecs)) for t in tiers]}
    for k in range(len(codecs)):
        for tier, *_ in tiers:
            p = [r[f"m{k}_{tier}_psnr"] for r in rows]
            d = [r[f"m{k}_{tier}_lpips_vgg"] for r in rows]
            line = {"psnr": float(np.mean(p)), "lpips_vgg": float(np.mean(d)),
                    "weight": float(np.mean([r[f"m{k}_{tier}_weight"] for r in rows]))}
            if k:
                p0 = [r[f"m0_{tier}_psnr"] for r in rows]
                d0 = [r[f"m0_{tier}_lpips_vgg"] for r in rows]
                line.update(d_psnr=float(np.mean(p) - np.mean(p0)),
                            psnr_better=int(sum(u > v for u, v in zip(p, p0))),
                            lpips_vgg_ratio=float(np.mean(d) / np.mean(d0)),
                            lpips_vgg_better=int(sum(u < v for u, v in zip(d, d0))))
            summary[f"m{k}_{tier}"] = line
            print(f"m{k} {a.models[k]} {tier}: " + ", ".join(
                f"{key} {v:.4f}" if isinstance(v, float) else f"{key} {v}/{len(rows)}"
                for key, v in line.items()), flush=True)
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
