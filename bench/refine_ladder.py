"""The base layer's downscale ladder, octaves (1, 2, 4) against the fine ladder (1, 4/3, 3/2,
2, 8/3, 3, 4), as the user gets it: the same model and target rate, the base each ladder's
search picks, and the tier decoded from it under the tier's bound.

On the validation split (never Kodak), PSNR and LPIPS-VGG only (LPIPS-Alex, DISTS and FID are
for evaluation), with each stream's bytes (both ladders stay within the same target, not at
the same bytes: the bytes are reported) and the search's time. Writes rows.json, summary.json
and 2× crops (original | octave base | fine base | octave tier | fine tier) where they differ.

The rule, fixed before the first run: the fine ladder becomes the encoder's default if, over
16 validation photos at each of 0.03, 0.06, 0.09, 0.12 and 0.2 bpp, the standard tier's mean
PSNR goes up and its mean LPIPS-VGG does not (ratio ≤ 1.000), within the same target rate.

    OMP_NUM_THREADS=1 python bench/refine_ladder.py refine-avif --images 16 \
        --rates 0.03,0.06,0.09,0.12,0.2 --out docs/results/refine-validation/ladder
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
from refine_ab import detailed_box
from refine_grid import crop_panel, print_row, psnr_and_lpips, validation_targets
from refine_operating_points import load_codec_from, validation_args

LADDERS = {"octave": (1, 2, 4), "fine": None}  # None: the codec's own (the fine ladder)


def search_before(array: np.ndarray, target: int, cfg):
    """The search as shipped until 2026-12-07: octaves only, real searches, stop at quality
    30 or after two candidates, the closer of them (``--octave before``)."""
    from cdc.refine import base_layer

    found, smallest = [], None
    for scale in (1, 2, 4):
        best, low = base_layer._best_fitting(array, target, scale, cfg)
        if low is not None and (smallest is None or len(low.data) < len(smallest.data)):
            smallest = low
        if best is not None:
            found.append(best)
            if best.quality >= 30 or len(found) == 2:
                break
    if not found:
        return smallest
    return min(found, key=lambda c: base_layer._squared_error(c, array))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name")
    validation_args(ap, 16)
    ap.add_argument("--rates", default="0.03,0.06,0.09,0.12,0.2")
    ap.add_argument("--tier", default="standard:1:0:0.5", help="name:steps:gamma:bound_db")
    ap.add_argument("--octave", choices=("walk", "before"), default="before",
                    help="the octave side: today's search over 1, 2, 4 (walk) or the search "
                         "as shipped before the fine ladder (before)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    from cdc.refine import base_layer, blend, downscale
    from pipeline.metrics.lpips import LPIPS

    codec, step = load_codec_from(a.model)
    cfg = codec.config
    tier, steps, gamma, bound = a.tier.split(":")
    steps, gamma, bound = int(steps), float(gamma), float(bound)
    measure = functools.partial(psnr_and_lpips, LPIPS("vgg"))
    out = Path(a.out) if a.out else None
    if out:
        (out / "crops").mkdir(parents=True, exist_ok=True)
    print(f"# {a.model} (step {step}); tier {a.tier}; fine ladder "
          + " ".join(downscale.label(c) for c in downscale.ladder(cfg.scales)), flush=True)

    rows = []
    for name, rate, arr, x, target in validation_targets(a, codec):
        h, w = arr.shape[:2]
        row: dict = {"image": name, "rate": rate}
        shown: dict[str, list] = {"base": [], "tier": []}
        for lad, ladder in LADDERS.items():
            t0 = time.perf_counter()
            if lad == "octave" and a.octave == "before":
                choice = search_before(arr, target, cfg)
            else:
                choice = base_layer.search(arr, target, cfg, ladder)
            row[f"{lad}_search_s"] = time.perf_counter() - t0
            base = base_layer.decode_choice(choice, h, w)
            ref = codec.refine(base, steps, gamma, 0)
            _, y = blend.bounded(x, base, ref, cfg.table, cfg.tile, bound)
            row[f"{lad}_bpp"] = 8 * (len(choice.data) + codec._overhead(h, w)) / (h * w)
            row[f"{lad}_scale"] = downscale.label(choice.scale)
            row[f"{lad}_quality"] = choice.quality
            row[f"{lad}_base_psnr"], row[f"{lad}_base_lpips_vgg"] = measure(base, x)
            row[f"{lad}_{tier}_psnr"], row[f"{lad}_{tier}_lpips_vgg"] = measure(y, x)
            shown["base"].append(base[0])
            shown["tier"].append(y[0])
        rows.append(row)
        print_row(row)
        if out and row["octave_scale"] != row["fine_scale"]:
            crop_panel([x[0], *shown["base"], *shown["tier"]],
                       detailed_box(x[0], a.crop)).save(
                out / "crops" / f"{Path(name).stem}_{rate:g}.png")

    summary: dict = {"model": a.model, "step": step, "tier": a.tier, "rates": a.rates,
                     "octave": a.octave,
                     "images": a.images, "first": a.first,
                     "panel_order": ["original", "octave base", "fine base",
                                     f"octave {tier}", f"fine {tier}"]}
    for rate in sorted({r["rate"] for r in rows}):
        rs = [r for r in rows if r["rate"] == rate]
        line: dict = {"rows": len(rs), "fractional_picked": sum(
            "/" in r["fine_scale"] or r["fine_scale"] == "x3" for r in rs)}
        for lad in LADDERS:
            line[lad] = {k: float(np.mean([r[f"{lad}_{k}"] for r in rs])) for k in (
                "bpp", "base_psnr", "base_lpips_vgg", f"{tier}_psnr", f"{tier}_lpips_vgg",
                "search_s")}
        for k in ("base_psnr", f"{tier}_psnr"):
            d = [r[f"fine_{k}"] - r[f"octave_{k}"] for r in rs]
            line[f"d_{k}"] = {"mean": float(np.mean(d)), "worst": float(min(d)),
                              "better": int(sum(v > 1e-9 for v in d)),
                              "worse": int(sum(v < -1e-9 for v in d))}
        for k in ("base_lpips_vgg", f"{tier}_lpips_vgg"):
            line[f"ratio_{k}"] = line["fine"][k] / line["octave"][k]
        summary[f"{rate:g}"] = line
        print(f"{rate:g} bpp: " + json.dumps(line), flush=True)
    if out:
        (out / "rows.json").write_text(json.dumps(rows, indent=1))
        (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
