"""Would a side latent pay for its bytes? The issue's optional layer, measured before building.

On the validation split (never Kodak), for each photo and rate: the standard tier as shipped;
then the TAEF2 latent of the original minus the refiner's latent estimate, scalar-quantized at
each step size (plain rounding) and costed at its zero-order entropy per channel (an ideal
adaptive coder with no model side information: optimistic for an untrained quantizer), added
to the refined latent, decoded and blended under the same bound; against the standard tier of
a base given those bytes instead. PSNR and LPIPS-VGG only.

A learned side latent (a trained transform under a hyperprior) would code the residual in
fewer bytes; this bench says how far an untrained one is from paying, so the question of
training one can be put with numbers.

    python bench/refine_side_latent.py refine-avif --images 6 --rates 0.06,0.12,0.25 \
        --root /work/shared/data/train --split ../configs/validation-split.txt \
        --out ../docs/results/refine-validation/side-latent/rows.json
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
import torch
from refine_grid import load_latent_codec, psnr_and_lpips, validation_targets
from refine_operating_points import validation_args
from torch import Tensor


def entropy_bits(q: Tensor) -> float:
    """Zero-order entropy of integer symbols, channel by channel, in bits."""
    bits = 0.0
    for c in range(q.shape[1]):
        _, n = np.unique(q[0, c].numpy(), return_counts=True)
        bits += float(-(n * np.log2(n / n.sum())).sum())
    return bits


def column_mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name (a latent one)")
    validation_args(ap, 6)
    ap.add_argument("--rates", default="0.06,0.12,0.25")
    ap.add_argument("--steps", default="5,4,3", help="quantizer step sizes (latent units)")
    ap.add_argument("--out", default="", help="a JSON file for the rows")
    a = ap.parse_args()

    from cdc.refine import base_layer, blend
    from cdc.refine.degrid import remove_grid
    from pipeline.metrics.lpips import LPIPS

    codec, step = load_latent_codec(a.model, "no latent to code")
    cfg, space = codec.config, codec.space
    measure = functools.partial(psnr_and_lpips, LPIPS("vgg"))
    m = space.stride

    def bounded(x: Tensor, base: Tensor, refined: Tensor) -> Tensor:
        return blend.bounded(x, base, refined, cfg.table, cfg.tile, cfg.bound_db)[1]

    def standard_at(arr: np.ndarray, x: Tensor, target: int) -> tuple[float, float]:
        h, w = arr.shape[:2]
        base = base_layer.decode_choice(base_layer.search(arr, target, cfg), h, w)
        return measure(bounded(x, base, codec.refine(base, 1, 0.0, 0)), x)

    print(f"# {a.model} (step {step}): side latent at steps {a.steps}", flush=True)
    rows = []
    for name, rate, arr, x, target in validation_targets(a, codec):
        h, w = arr.shape[:2]
        stream = rate * h * w / 8
        base = base_layer.decode_choice(base_layer.search(arr, target, cfg), h, w)
        p0, l0 = measure(bounded(x, base, codec.refine(base, 1, 0.0, 0)), x)
        zr = codec.refined_latent(base, 1, 0.0, 0)
        padded = torch.nn.functional.pad(x, (0, -w % m, 0, -h % m), mode="replicate")
        with torch.no_grad():
            residual = space.encode(padded).float() - zr
        for d in (float(s) for s in a.steps.split(",")):
            q = torch.round(residual / d)
            extra = entropy_bits(q) / 8
            with torch.no_grad():
                dec = space.decode(zr + d * q).float()[..., :h, :w]
            dec = remove_grid(dec, base, m, cfg.degrid_window).clamp(-1, 1)
            ps, ls = measure(bounded(x, base, dec), x)
            pb, lb = standard_at(arr, x, target + int(extra))
            row = {"image": name, "rate": rate, "step": d, "extra_bytes": extra,
                   "extra_share": extra / stream, "nonzero": int((q != 0).sum()),
                   "psnr": p0, "lpips_vgg": l0, "psnr_side": ps, "lpips_vgg_side": ls,
                   "psnr_in_base": pb, "lpips_vgg_in_base": lb}
            rows.append(row)
            print(f"{name} {rate:g} step {d:g}: +{100 * extra / stream:.1f} % bytes: side "
                  f"{ps - p0:+.3f} dB, LPIPS-VGG x{ls / l0:.3f} | the same bytes in the base "
                  f"{pb - p0:+.3f} dB, x{lb / l0:.3f}", flush=True)
    for rate in sorted({r["rate"] for r in rows}):
        for d in sorted({r["step"] for r in rows}, reverse=True):
            rs = [r for r in rows if r["rate"] == rate and r["step"] == d]
            mean = functools.partial(column_mean, rs)
            print(f"rate {rate:g} step {d:g}: +{100 * mean('extra_share'):.1f} % bytes; side "
                  f"{mean('psnr_side') - mean('psnr'):+.3f} dB, LPIPS-VGG "
                  f"x{mean('lpips_vgg_side') / mean('lpips_vgg'):.3f}; in the base "
                  f"{mean('psnr_in_base') - mean('psnr'):+.3f} dB, "
                  f"x{mean('lpips_vgg_in_base') / mean('lpips_vgg'):.3f}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"model": a.model, "step": step, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
