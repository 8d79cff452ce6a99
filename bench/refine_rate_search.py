"""The refine base layer's rate search against plain bisection (the search before
2026-12-06): the quality each finds and the AVIF encodes each needs, on 30 validation-split
photos (``val``) or the first N Kodak images (``N``), at the evaluation's five rates and
scales 1, 2, 4. Encodes are cached per (photo, quality, scale); each search counts its own.

    python bench/refine_rate_search.py val
    python bench/refine_rate_search.py 24
"""

from __future__ import annotations

import glob
import sys

import numpy as np
from PIL import Image

from cdc.refine import base_layer
from zoo import load_codec

CFG = load_codec("refine-avif").config
REAL_ENCODE = base_layer.encode
CACHE: dict = {}
COUNT = [0]
PHOTO = [""]


def counted_encode(array, quality, scale, cfg):
    COUNT[0] += 1
    key = (PHOTO[0], quality, scale)
    if key not in CACHE:
        CACHE[key] = REAL_ENCODE(array, quality, scale, cfg)
    return CACHE[key]


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
    base_layer.encode = counted_encode
    n_old = n_new = same = total = 0
    for f in photos(which):
        PHOTO[0] = f
        a = np.asarray(Image.open(f).convert("RGB"))
        for bpp in (0.03, 0.06, 0.12, 0.25, 0.5):
            target = int(bpp * a.shape[0] * a.shape[1] / 8)
            for scale in (1, 2, 4):
                COUNT[0] = 0
                old = bisection(a, target, scale)
                n_old += COUNT[0]
                COUNT[0] = 0
                best, _ = base_layer._best_fitting(a, target, scale, CFG)
                n_new += COUNT[0]
                new = None if best is None else best.quality
                total += 1
                same += old == new
                if old != new:
                    print("different:", f, bpp, "bpp, scale", scale, "bisection", old, "search",
                          new)
    print(f"{total} searches, the same quality in {same}; AVIF encodes: bisection {n_old}, "
          f"search {n_new} ({n_new / n_old:.2f})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "val")
