"""The latent refinement as a pixel delta: base + D(zb + Δ) − D(zb) instead of D(zb + Δ).

TAEF2's round trip of a base is ≈ 2 dB under the base itself at 0.5 bpp, and the shipped
refiner's output D(zb + Δ) carries that loss, so the bound keeps less of it as the rate grows.
Adding only the refinement's change to the base keeps the base's own detail, at the price of a
second TAEF2 decode (D(zb)) at both ends. This bench measures it zero-shot, on the validation
split (never Kodak), PSNR and LPIPS-VGG only, each form under the same bound: raw, bounded,
and the mean blend weight kept.

    python bench/refine_pixel_delta.py refine-avif --images 8 --rates 0.06,0.12,0.25,0.5 \
        --root /work/shared/data/train --split ../configs/validation-split.txt \
        --out ../docs/results/refine-validation/pixel-delta/rows.json
"""

from __future__ import annotations

import argparse
import functools
import json

import torch
from refine_grid import (
    bound_arg,
    column_means,
    load_latent_codec,
    print_row,
    psnr_and_lpips,
    validation_bases,
)
from refine_operating_points import validation_args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name (a latent one)")
    validation_args(ap, 8)
    ap.add_argument("--rates", default="0.06,0.12,0.25,0.5")
    bound_arg(ap)
    ap.add_argument("--out", default="", help="a JSON file for the rows")
    a = ap.parse_args()

    from cdc.refine import blend
    from cdc.refine.degrid import remove_grid
    from pipeline.metrics.lpips import LPIPS

    codec, step = load_latent_codec(a.model, "no latent decode to difference")
    cfg, space = codec.config, codec.space
    bound = cfg.bound_db if a.bound is None else a.bound
    measure = functools.partial(psnr_and_lpips, LPIPS("vgg"))
    table = torch.tensor(cfg.table)
    print(f"# {a.model} (step {step}), standard path, bound {bound} dB", flush=True)
    rows = []
    for name, rate, x, base in validation_bases(a, codec):
        h, w = x.shape[-2:]
        cond = codec.condition(base)
        with torch.no_grad():
            refined = space.decode(codec.refined_latent(base, 1, 0.0, 0, cond)).float()
            round_trip = space.decode(cond).float()
        refined, round_trip = refined[..., :h, :w], round_trip[..., :h, :w]
        forms = {"shipped": refined, "delta": base + refined - round_trip}
        row = {"image": name, "rate": rate}
        row["base_psnr"], row["base_lpips_vgg"] = measure(base, x)
        row["round_trip_psnr"], _ = measure(round_trip.clamp(-1, 1), x)
        for form, out in forms.items():
            out = remove_grid(out, base, space.stride, cfg.degrid_window).clamp(-1, 1)
            idx, y = blend.bounded(x, base, out, cfg.table, cfg.tile, bound)
            row[f"{form}_raw_psnr"], row[f"{form}_raw_lpips_vgg"] = measure(out, x)
            row[f"{form}_psnr"], row[f"{form}_lpips_vgg"] = measure(y, x)
            row[f"{form}_weight"] = float(table[idx].mean())
        rows.append(row)
        print_row(row)
    for rate in sorted({r["rate"] for r in rows}):
        rs = [r for r in rows if r["rate"] == rate]
        m = column_means(rs)
        print(f"rate {rate:g}: base {m['base_psnr']:.3f} dB, TAEF2 round trip "
              f"{m['round_trip_psnr']:.3f} dB; bounded shipped {m['shipped_psnr']:.3f} dB "
              f"LPIPS-VGG {m['shipped_lpips_vgg']:.4f} weight {m['shipped_weight']:.3f} | delta "
              f"{m['delta_psnr']:.3f} dB {m['delta_lpips_vgg']:.4f} weight "
              f"{m['delta_weight']:.3f}; raw {m['shipped_raw_psnr']:.3f} → "
              f"{m['delta_raw_psnr']:.3f} dB", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"model": a.model, "step": step, "bound_db": bound, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
