"""Would a quality floor on the base-layer candidates help? Today's search against the same
search where a candidate under ``--floor`` loses to any other (its error ×1e6), the standard
tier decoded from each (validation split, never Kodak; PSNR and LPIPS-VGG only).

Why: MSE can prefer AVIF quality 2 at a larger size, whose flat blocks survive refinement
(docs/results/refine-validation/ladder). Measured 2026-12-07 with --floor 10 on 16 photos at
0.03/0.06/0.09 bpp: 5/1/1 searches changed, 6 of the 7 worse on PSNR (−0.06 … −0.26 dB)
and 6 of 7 worse on LPIPS-VGG — not adopted.

    OMP_NUM_THREADS=1 python bench/refine_quality_floor.py --floor 10 --images 16 \
        --rates 0.03,0.06,0.09
"""

import argparse
import functools

import numpy as np
from refine_grid import psnr_and_lpips, validation_targets
from refine_operating_points import load_codec_from, validation_args

from cdc.refine import base_layer, blend, downscale
from pipeline.metrics.lpips import LPIPS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    validation_args(ap, 16)
    ap.add_argument("--rates", default="0.03,0.06,0.09")
    ap.add_argument("--floor", type=int, default=10)
    a = ap.parse_args()
    FLOOR = a.floor
    codec, _ = load_codec_from("refine-avif")
    cfg = codec.config
    measure = functools.partial(psnr_and_lpips, LPIPS("vgg"))
    plain = base_layer._squared_error

    def floored(c, arr):
        e = plain(c, arr)
        return e * 1e6 if c.quality < FLOOR else e

    rows = []
    for name, rate, arr, x, target in validation_targets(a, codec):
        h, w = arr.shape[:2]
        row = {"image": name, "rate": rate}
        for side in ("today", "floor"):
            base_layer._squared_error = floored if side == "floor" else plain
            c = base_layer.search(arr, target, cfg)
            base_layer._squared_error = plain
            base = base_layer.decode_choice(c, h, w)
            ref = codec.refine(base, 1, 0.0, 0)
            _, y = blend.bounded(x, base, ref, cfg.table, cfg.tile, cfg.bound_db)
            row[side] = (downscale.label(c.scale), c.quality, len(c.data)) + measure(y, x)
        rows.append(row)
        print(row, flush=True)
    for rate in sorted({r["rate"] for r in rows}):
        rs = [r for r in rows if r["rate"] == rate]
        ch = [r for r in rs if r["today"][:2] != r["floor"][:2]]
        dp = [r["floor"][3] - r["today"][3] for r in rs]
        dl = [r["floor"][4] - r["today"][4] for r in rs]
        print(f"{rate:g} bpp: changed {len(ch)} of {len(rs)}, PSNR {np.mean(dp):+.3f} dB, "
              f"LPIPS-VGG {np.mean(dl):+.4f}; changed rows: PSNR "
              f"{[round(r['floor'][3] - r['today'][3], 3) for r in ch]}, LPIPS-VGG "
              f"{[round(r['floor'][4] - r['today'][4], 4) for r in ch]}")


if __name__ == "__main__":
    main()
