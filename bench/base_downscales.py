"""Which downscale of the AVIF base decodes closest to the original at a given rate, over a
ladder of factors (validation split, never Kodak): the evidence behind
:data:`cdc.refine.downscale.FINE_LADDER` and :data:`cdc.refine.base_layer.TRY_NEXT_SCALE_BELOW`.

For each photo, rate and factor: the highest AVIF quality (bisection over real encodes, the
codec's settings, bare bytes) within the rate, and the PSNR of its decode upsampled as the
decoder does. Summaries: the best factor's gain over the best octave (1, 2, 4), and, for
each stopping quality T, the gain and the encoded area of a walk that stops at the first
factor whose quality reaches T (the search's rule), against the octave walk at T = 30.

    OMP_NUM_THREADS=1 python bench/base_downscales.py --images 16 \
        --rates 0.03,0.045,0.06,0.08,0.1,0.12,0.16,0.2,0.25 --out /tmp/downscales.json
"""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from refine_operating_points import validation_args, validation_photo


def best_at(arr: np.ndarray, budget: float, code: int, cfg) -> tuple[int, float] | None:
    """(quality, PSNR) of the highest quality at downscale ``code`` within ``budget`` bytes."""
    from cdc.refine import base_layer
    from cdc.refine.downscale import scaled_size

    h, w = arr.shape[:2]
    small = arr
    if code != 1:
        sh, sw = scaled_size(h, w, code)
        small = np.asarray(Image.fromarray(arr).resize((sw, sh), Image.LANCZOS))
    lo, hi, found = 0, 100, None
    while lo <= hi:
        q = (lo + hi) // 2
        c = base_layer.encode(small, q, 1, cfg)
        if len(c.data) <= budget:
            found, lo = c, q + 1
        else:
            hi = q - 1
    if found is None:
        return None
    choice = base_layer.BaseChoice(found.data, found.quality, code, found.bare)
    y = base_layer.decode_choice(choice, h, w)
    y = ((y.clamp(-1, 1) + 1) * 127.5).round()
    x = np.asarray(arr, dtype=np.float32).transpose(2, 0, 1)[None]
    mse = float(((y.numpy() - x) ** 2).mean())
    return found.quality, 10 * math.log10(255 ** 2 / max(mse, 1e-12))


def walk(res: dict[str, tuple[int, float]], ladder: list[str], stop: int
         ) -> tuple[float, float]:
    """(best PSNR, encoded area in full-size units) of the search's walk over ``ladder``."""
    psnrs, area = [], 0.0
    for k in ladder:
        area += 1 / float(Fraction(k)) ** 2
        if k in res:
            psnrs.append(res[k][1])
            if res[k][0] >= stop:
                break
    return max(psnrs), area


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    validation_args(ap, 16)
    ap.add_argument("--rates", default="0.03,0.045,0.06,0.08,0.1,0.12,0.16,0.2,0.25")
    ap.add_argument("--model", default="refine-avif", help="whose base-layer settings")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    from cdc.refine import downscale
    from pipeline.training.refine_pairs import read_split
    from zoo import load_codec

    cfg = load_codec(a.model).config
    factors = [str(f) for f in downscale.FINE_LADDER if f <= max(cfg.scales)]
    octaves = [k for k in factors if k in ("1", "2", "4", "8")]
    rows = []
    for name in sorted(read_split(a.split))[a.first: a.first + a.images]:
        arr = np.asarray(validation_photo(a.root, name))
        for rate in (float(r) for r in a.rates.split(",")):
            budget = rate * arr.shape[0] * arr.shape[1] / 8
            res = {}
            for k in factors:
                got = best_at(arr, budget, downscale.code(Fraction(k)), cfg)
                if got is not None:
                    res[k] = got
            if not any(k in res for k in octaves):
                continue
            rows.append({"image": name, "rate": rate, "res": res})
            print(name, rate, {k: (q, round(p, 2)) for k, (q, p) in res.items()}, flush=True)

    summary: dict = {"factors": factors, "rows": len(rows), "by_rate": {}}
    for rate in sorted({r["rate"] for r in rows}):
        rs = [r for r in rows if r["rate"] == rate]
        line: dict = {"rows": len(rs)}
        line["best_vs_best_octave_db"] = float(np.mean([
            max(p for _, p in r["res"].values())
            - max(r["res"][k][1] for k in octaves if k in r["res"]) for r in rs]))
        wins: dict[str, int] = {}
        for r in rs:
            k = max(r["res"], key=lambda k: r["res"][k][1])
            wins[k] = wins.get(k, 0) + 1
        line["winners"] = wins
        for stop in (30, 35, 40, 45, 50, 101):
            d, area = [], []
            for r in rs:
                p, ar = walk(r["res"], factors, stop)
                d.append(p - walk(r["res"], octaves, 30)[0])
                area.append(ar)
            line[f"stop_{stop}"] = {"gain_db": float(np.mean(d)), "area": float(np.mean(area)),
                                    "worse": int(sum(v < -1e-9 for v in d))}
        summary["by_rate"][f"{rate:g}"] = line
        print(f"{rate:g}: {json.dumps(line)}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
