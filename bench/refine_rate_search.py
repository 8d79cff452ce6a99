"""The refine base layer's rate search against plain bisection (the search before
2026-12-06): the quality each finds and the AVIF encodes each needs, on 30 validation-split
photos (``val``) or the first N Kodak images (``N``), at the evaluation's five rates and
scales 1, 2, 4. Encodes are cached per (photo, quality, scale), so both count their own.

    python bench/refine_rate_search.py val
    python bench/refine_rate_search.py 24
"""
import glob
import sys

import numpy as np
from PIL import Image

from cdc.refine import base_layer
from zoo import load_codec

cfg = load_codec("refine-avif").config
real = base_layer.encode
cache, calls, CUR = {}, [0], [None]
def enc(array, q, scale, c):
    calls[0] += 1
    k = (CUR[0], q, scale)
    if k not in cache:
        cache[k] = real(array, q, scale, c)
    return cache[k]
base_layer.encode = enc
def old(array, target, scale):
    low = enc(array, 0, scale, cfg)
    if len(low.data) > target:
        return None
    lo, hi, best = 0, 100, low
    while lo < hi:
        mid = (lo + hi + 1) // 2
        c = enc(array, mid, scale, cfg)
        if len(c.data) <= target:
            best, lo = c, mid
        else:
            hi = mid - 1
    return best.quality
n_old = n_new = same = total = 0
if sys.argv[1] == "val":
    names = [l.strip() for l in open("configs/validation-split.txt") if l.strip() and not l.startswith("#")]
    files = ["/work/shared/data/train/" + n for n in names][:30]
else:
    files = sorted(glob.glob("/work/shared/data/kodak/*.png"))[: int(sys.argv[1])]
for f in files:
    a = np.asarray(Image.open(f).convert("RGB")); CUR[0] = f
    for bpp in (0.03, 0.06, 0.12, 0.25, 0.5):
        t = int(bpp * a.shape[0] * a.shape[1] / 8)
        for scale in (1, 2, 4):
            calls[0] = 0; qo = old(a, t, scale); n_old += calls[0]
            calls[0] = 0; b, _ = base_layer._best_fitting(a, t, scale, cfg); n_new += calls[0]
            qn = None if b is None else b.quality
            total += 1; same += qo == qn
            if qo != qn: print("DIFF", f, bpp, scale, qo, qn)
print(f"{total} searches, same quality in {same}; encodes old {n_old} new {n_new} ({n_new / n_old:.2f})")
