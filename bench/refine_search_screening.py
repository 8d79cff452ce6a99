"""How much of the fine downscale ladder's gain the search's fast-encode ranking keeps
(validation split, never Kodak): base PSNR of today's search, of a real search at every step
of the ladder (until quality TRY_NEXT_SCALE_BELOW), and of the search as shipped before the
fine ladder (octaves, stop at quality 30 or two candidates), at the same target rates.

    OMP_NUM_THREADS=1 python bench/refine_search_screening.py --images 16 \
        --rates 0.03,0.06,0.09,0.12,0.2 [--candidates 3 --margin 0.05]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from refine_ladder import search_before
from refine_operating_points import validation_args, validation_photo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    validation_args(ap, 16)
    ap.add_argument("--rates", default="0.03,0.06,0.09,0.12,0.2")
    ap.add_argument("--model", default="refine-avif")
    ap.add_argument("--candidates", type=int, default=None, help="SCREENED_CANDIDATES")
    ap.add_argument("--margin", type=float, default=None, help="SCREEN_MARGIN")
    a = ap.parse_args()

    from cdc.refine import base_layer, downscale
    from pipeline.training.refine_pairs import read_split
    from zoo import load_codec

    if a.candidates is not None:
        base_layer.SCREENED_CANDIDATES = a.candidates
    if a.margin is not None:
        base_layer.SCREEN_MARGIN = a.margin
    codec = load_codec(a.model)
    cfg = codec.config

    def full_walk(arr: np.ndarray, target: int):
        found = []
        for c in downscale.ladder(cfg.scales):
            b, _ = base_layer._best_fitting(arr, target, c, cfg)
            if b is not None:
                found.append(b)
                if b.quality >= base_layer.TRY_NEXT_SCALE_BELOW:
                    break
        return min(found, key=lambda c: base_layer._squared_error(c, arr)) if found else None

    res: dict[float, list] = {}
    for name in sorted(read_split(a.split))[a.first: a.first + a.images]:
        arr = np.asarray(validation_photo(a.root, name))
        h, w = arr.shape[:2]
        for rate in (float(r) for r in a.rates.split(",")):
            target = max(1, int(rate * h * w / 8) - codec._overhead(h, w))
            old, full = search_before(arr, target, cfg), full_walk(arr, target)
            if full is None or len(old.data) > target:
                continue
            today = base_layer.search(arr, target, cfg)

            p = {k: 10 * math.log10(4 * h * w * 3 / base_layer._squared_error(c, arr))
                 for k, c in (("today", today), ("old", old), ("full", full))}
            res.setdefault(rate, []).append((p["today"] - p["old"], p["full"] - p["old"],
                                             len(today.data) / len(old.data) - 1))
    print(f"# {base_layer.SCREENED_CANDIDATES} candidates within {base_layer.SCREEN_MARGIN}")
    for rate, v in sorted(res.items()):
        d = np.array(v)
        print(f"{rate:g} bpp, {len(d)} photos: today - before {d[:, 0].mean():+.3f} dB "
              f"(worse on {(d[:, 0] < -1e-9).sum()}), full walk - before {d[:, 1].mean():+.3f} dB"
              f", bytes {100 * d[:, 2].mean():+.1f} %")


if __name__ == "__main__":
    main()
