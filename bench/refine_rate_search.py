"""The refine base layer's rate search against plain bisection: the quality each finds and
the AVIF encodes each needs (real ones at the model's speed; fast predictor ones), with
their cost in seconds, on 30 validation-split photos (``val``) or the first N Kodak images
(``N``), at the evaluation's five rates and scales 1, 2, 4; and the previous search (the
predictor's own bracket search run on real encodes, 2026-12-06). Encodes are cached per (photo,
quality, scale, speed) and timed once (one thread); each search is charged for the encodes
it asks for. Also prints the median real/fast size ratio (the search's first guess).

    python bench/refine_rate_search.py val
    python bench/refine_rate_search.py 24
"""

from __future__ import annotations

import glob
import sys
import time

import numpy as np
from PIL import Image

from cdc.refine import base_layer, rate_search
from zoo import load_codec

CFG = load_codec("refine-avif").config
REAL_ENCODE = base_layer.encode
CACHE: dict = {}
COUNT = {"real": 0, "fast": 0, "seconds": 0.0}
PHOTO = [""]


def counted_encode(array, quality, scale, cfg):
    kind = "real" if cfg.base_speed == CFG.base_speed else "fast"
    COUNT[kind] += 1
    key = (PHOTO[0], array.shape, quality, scale, cfg.base_speed)
    if key not in CACHE:
        t = time.perf_counter()
        CACHE[key] = (REAL_ENCODE(array, quality, scale, cfg), time.perf_counter() - t)
    COUNT["seconds"] += CACHE[key][1]
    return CACHE[key][0]


def reset() -> dict:
    old = dict(COUNT)
    COUNT.update(real=0, fast=0, seconds=0.0)
    return old


def bisection(array: np.ndarray, target: int, scale: int) -> int | None:
    low = counted_encode(array, 0, scale, CFG)
    if len(low.data) > target:
        return None
    lo, hi = 0, 100
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(counted_encode(array, mid, scale, CFG).data) <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def photos(which: str) -> list[str]:
    if which == "val":
        names = [ln.strip() for ln in open("configs/validation-split.txt")
                 if ln.strip() and not ln.startswith("#")]
        return ["../shared/data/train/" + n for n in names][:30]
    return sorted(glob.glob("../shared/data/kodak/*.png"))[: int(which)]


def main(which: str) -> None:
    from dataclasses import replace

    import torch

    torch.set_num_threads(1)
    base_layer.encode = counted_encode
    fast_cfg = replace(CFG, base_speed=base_layer.FAST_SPEED)
    old_n = old_s = new_real = new_fast = new_s = 0.0
    same = total = same_prev = 0
    prev_n = prev_s = 0.0
    ratios = []
    for f in photos(which):
        PHOTO[0] = f
        a = np.asarray(Image.open(f).convert("RGB"))
        for bpp in (0.03, 0.06, 0.12, 0.25, 0.5):
            target = int(bpp * a.shape[0] * a.shape[1] / 8)
            for scale in (1, 2, 4):
                reset()
                old = bisection(a, target, scale)
                c = reset()
                old_n += c["real"]
                old_s += c["seconds"]
                h, w = base_layer.scaled_size(a.shape[0], a.shape[1], scale)
                small = a if scale == 1 else np.asarray(
                    Image.fromarray(a).resize((w, h), Image.LANCZOS))
                sizes: dict[int, int] = {}

                def size(q: int, small=small, sizes=sizes) -> int:
                    if q not in sizes:
                        sizes[q] = len(counted_encode(small, q, 1, CFG).data)
                    return sizes[q]

                prev = rate_search._largest_predicted(size, target, 0, 100)  # until 2026-12-07
                prev = None if size(prev) > target else prev
                c = reset()
                prev_n += c["real"]
                prev_s += c["seconds"]
                best, _ = base_layer._best_fitting(a, target, scale, CFG)
                c = reset()
                new_real += c["real"]
                new_fast += c["fast"]
                new_s += c["seconds"]
                new = None if best is None else best.quality
                if old is not None:  # the real/fast size ratio at the answer
                    ratios.append(len(counted_encode(small, old, 1, CFG).data)
                                  / len(counted_encode(small, old, 1, fast_cfg).data))
                    reset()
                same_prev += prev == old
                total += 1
                same += old == new
                if old != new:
                    print("different:", f, bpp, "bpp, scale", scale, "bisection", old, "search",
                          new)
    print(f"{total} searches; the same quality as bisection: search {same}, previous search "
          f"{same_prev}")
    print(f"real AVIF encodes: bisection {old_n:.0f}, previous search {prev_n:.0f} "
          f"({prev_n / old_n:.2f}), search {new_real:.0f} ({new_real / old_n:.2f}) + "
          f"{new_fast:.0f} fast")
    print(f"encode seconds (one thread): bisection {old_s:.1f}, previous {prev_s:.1f} "
          f"({prev_s / old_s:.2f}), search {new_s:.1f} ({new_s / old_s:.2f})")
    print(f"real/fast size ratio at the answer: median {float(np.median(ratios)):.3f}, "
          f"quartiles {np.percentile(ratios, 25):.3f}-{np.percentile(ratios, 75):.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "val")
