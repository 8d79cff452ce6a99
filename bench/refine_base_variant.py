"""One refine model with another base-layer setting (chroma subsampling, libaom tune), the
whole path as the user gets it: each variant's own rate search at the same total rate, the
same refiner, each tier's bound; on the validation split (never Kodak), PSNR and LPIPS-VGG
only. The model's weights stay as trained (on its own base setting): a gain here is what the
setting buys without retraining.

    OMP_NUM_THREADS=1 python bench/refine_base_variant.py refine-avif \
        --variant base_subsampling=4:4:4 --images 12 --rates 0.06,0.12,0.25 --out /tmp/v.json
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from refine_ab import parse_tiers
from refine_grid import psnr_and_lpips, validation_bases
from refine_operating_points import load_codec_from, validation_args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name")
    ap.add_argument("--variant", required=True, help="FIELD=VALUE of the refine config")
    validation_args(ap, 12)
    ap.add_argument("--rates", default="0.06,0.12,0.25")
    ap.add_argument("--tiers", default="standard:1:0:0.5,high:1:0.6:1.5")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    from cdc.refine import blend
    from pipeline.metrics.lpips import LPIPS

    codec, _ = load_codec_from(a.model)
    field, value = a.variant.split("=", 1)
    other = replace(codec.config, **{field: type(getattr(codec.config, field))(value)})
    variant = load_codec_from(a.model)[0]
    variant.net.cfg = other  # the base-layer fields are read at encode time only
    tiers = parse_tiers(a.tiers)
    measure = functools.partial(psnr_and_lpips, LPIPS("vgg"))
    rows: list[dict] = []
    runs = {"shipped": validation_bases(a, codec), a.variant: validation_bases(a, variant)}
    for (name, rate, x, base), (_, _, _, base_v) in zip(*runs.values()):
        row: dict = {"image": name, "rate": rate}
        for label, c, b in (("shipped", codec, base), ("variant", variant, base_v)):
            row[f"{label}_base"] = measure(b, x)
            for tier, steps, gamma, bound in tiers:
                ref = c.refine(b, steps, gamma, 0)
                _, y = blend.bounded(x, b, ref, c.config.table, c.config.tile, bound)
                row[f"{label}_{tier}"] = measure(y, x)
        rows.append(row)
        print(name, rate, {k: [round(v, 4) for v in row[k]] for k in row
                           if k not in ("image", "rate")}, flush=True)
    summary = {}
    for rate in sorted({r["rate"] for r in rows}):
        rs = [r for r in rows if r["rate"] == rate]
        for part in ["base", *(t[0] for t in tiers)]:
            dp = [r[f"variant_{part}"][0] - r[f"shipped_{part}"][0] for r in rs]
            lv = [r[f"variant_{part}"][1] for r in rs]
            ls = [r[f"shipped_{part}"][1] for r in rs]
            summary[f"{rate:g} {part}"] = {
                "rows": len(rs), "psnr_delta": float(np.mean(dp)), "worst_psnr": float(min(dp)),
                "lpips_vgg_ratio": float(np.mean(lv) / np.mean(ls)),
                "lpips_vgg_better": int(sum(v < s for v, s in zip(lv, ls)))}
            print(f"{rate:g} {part}: {json.dumps(summary[f'{rate:g} {part}'])}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"model": a.model, "variant": a.variant,
                                           "tiers": a.tiers, "summary": summary,
                                           "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
