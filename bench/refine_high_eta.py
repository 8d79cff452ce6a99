"""The high tier with stochastic DDIM steps (η > 0): texture the deterministic path averages away.

The shipped high path (1 step from γ 0.6, η 0) ends at the denoiser's mean estimate, so it
differs little from the standard tier (README weakness 4). With η > 0 every step adds fresh
noise and the next step's estimate starts from it; with several steps the last estimate keeps
some of it, which TAEF2's decoder paints as texture. On the validation split (never Kodak),
each candidate path under the high tier's bound, PSNR and LPIPS-VGG only, the rule fixed
before the run: **the candidate with the lowest mean LPIPS-VGG over all rows**, the shipped
path included. 2× crops (original | base | standard | each candidate) of the photo's most
detailed window, for looking.

    python bench/refine_high_eta.py refine-avif --images 6 --rates 0.06,0.12,0.25 \
        --root /work/shared/data/train --split ../configs/validation-split.txt \
        --out ../docs/results/refine-validation/high-eta
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from refine_grid import (
    column_means,
    crop_panel,
    out_folder,
    print_row,
    psnr_and_lpips,
    validation_bases,
)
from refine_operating_points import load_codec_from, validation_args

#: (steps, γ, η): the shipped high path first
CANDIDATES = [(1, 0.6, 0.0), (2, 0.6, 1.0), (3, 0.6, 1.0), (3, 1.0, 1.0), (4, 0.6, 0.5)]


def detailed_window(x, side: int) -> tuple[int, int, int]:
    """(top, left, side) of the window with the most gradient energy, on a 32-px grid."""
    import torch

    g = (x[..., 1:, 1:] - x[..., :-1, 1:]).abs() + (x[..., 1:, 1:] - x[..., 1:, :-1]).abs()
    h, w = g.shape[-2:]
    side = min(side, h, w)
    e = torch.nn.functional.avg_pool2d(g.mean(1, keepdim=True), side, stride=32)
    i = int(torch.argmax(e.flatten()))
    return (i // e.shape[-1]) * 32, (i % e.shape[-1]) * 32, side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name")
    validation_args(ap, 6)
    ap.add_argument("--rates", default="0.06,0.12,0.25")
    ap.add_argument("--out", default="", help="a folder for rows.json and the crops")
    a = ap.parse_args()

    from cdc.refine import blend
    from pipeline.metrics.lpips import LPIPS

    codec, step = load_codec_from(a.model)
    cfg = codec.config
    measure = functools.partial(psnr_and_lpips, LPIPS("vgg"))
    keys = [f"s{s}g{g:g}e{e:g}" for s, g, e in CANDIDATES]
    out = out_folder(a.out)
    print(f"# {a.model} (step {step}): high bound {cfg.bound_db_noisy} dB, {keys}", flush=True)
    rows = []
    for name, rate, x, base in validation_bases(a, codec):
        cond = codec.condition(base)
        row = {"image": name, "rate": rate}
        _, standard = blend.bounded(x, base, codec.refine(base, 1, 0.0, 0, cond), cfg.table,
                                    cfg.tile, cfg.bound_db)
        row["standard_psnr"], row["standard_lpips_vgg"] = measure(standard, x)
        shown = [x, base, standard]
        for key, (steps, gamma, eta) in zip(keys, CANDIDATES):
            refined = codec.refine(base, steps, gamma, 0, cond, eta=eta)
            _, y = blend.bounded(x, base, refined, cfg.table, cfg.tile, cfg.bound_db_noisy)
            row[f"{key}_psnr"], row[f"{key}_lpips_vgg"] = measure(y, x)
            shown.append(y)
        rows.append(row)
        print_row(row)
        if out:
            crop_panel([t[0] for t in shown], detailed_window(x, 128)).save(
                out / f"{Path(name).stem}-{rate:g}bpp.png")
    means = {}
    for rate in [None, *sorted({r["rate"] for r in rows})]:
        rs = [r for r in rows if rate is None or r["rate"] == rate]
        m = column_means(rs)
        label = "all rows" if rate is None else f"rate {rate:g}"
        print(f"{label}: standard {m['standard_psnr']:.3f} dB {m['standard_lpips_vgg']:.4f}; "
              + "; ".join(f"{k} {m[f'{k}_psnr']:.3f} dB {m[f'{k}_lpips_vgg']:.4f}"
                          for k in keys), flush=True)
        means[label] = m
    chosen = min(keys, key=lambda k: means["all rows"][f"{k}_lpips_vgg"])
    print(f"chosen by the rule (lowest mean LPIPS-VGG): {chosen}", flush=True)
    if out:
        (out / "rows.json").write_text(json.dumps(
            {"model": a.model, "step": step, "candidates": CANDIDATES, "rows": rows,
             "means": means, "chosen": chosen}, indent=1))


if __name__ == "__main__":
    main()
