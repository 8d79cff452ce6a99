"""Train/decode quantizer mismatch of a CDC model: uniform noise (what training sees) vs
rounding (what the decoder gets), same crops, same network, one run.

CompressAI's latent codecs add U(−½, ½) noise to the latent in training mode and round
it (around the means / medians) in eval mode. Training only ever sees the first, so if
the decoder is much worse on rounded latents than on noisy ones, a straight-through or
mixed quantizer would help. Per crop: the rate estimate (bits of the likelihoods) and the
1-step (γ 0) decode's PSNR, both ways. Validation photos only (never Kodak).

    OMP_NUM_THREADS=1 python bench/bench_quantizer_mismatch.py --model lcdc-q3 --crops 8
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from refine_operating_points import validation_args, validation_photo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lcdc-q3")
    validation_args(ap, 8, "--crops")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--json", default="")
    a = ap.parse_args()

    from cdc.image import array_to_tensor
    from pipeline.training.refine_pairs import read_split
    from zoo import load_codec

    torch.manual_seed(0)
    m = load_codec(a.model).model
    rows = []
    for name in sorted(read_split(a.split))[: a.crops]:
        arr = np.asarray(validation_photo(a.root, name))
        h, w = arr.shape[:2]
        s = min(a.size, h, w) // 32 * 32
        top, left = (h - s) // 2, (w - s) // 2
        x = array_to_tensor(arr[top:top + s, left:left + s])
        row = {"image": name, "side": s}
        with torch.no_grad():
            u = m.encode_space(x)
            for mode in ("noise", "round"):
                m.entropy.train(mode == "noise")
                out = m(u)
                bits = sum(float(-torch.log2(v.clamp_min(1e-9)).sum())
                           for v in out["likelihoods"].values())
                y = m.decode_space(m.sample(out["y_hat"], 1, 0.0, 0)).clamp(-1, 1)
                mse = float(((y - x) ** 2).mean()) / 4
                row[f"{mode}_bpp"] = bits / (s * s)
                row[f"{mode}_psnr"] = 10 * math.log10(1 / max(mse, 1e-12))
            m.entropy.eval()
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    summary = {"model": a.model, "rows": rows}
    for k in ("noise_bpp", "round_bpp", "noise_psnr", "round_psnr"):
        summary[f"mean_{k}"] = float(np.mean([r[k] for r in rows]))
    summary["psnr_round_minus_noise"] = summary["mean_round_psnr"] - summary["mean_noise_psnr"]
    summary["bpp_round_over_noise"] = summary["mean_round_bpp"] / summary["mean_noise_bpp"]
    print({k: round(v, 4) for k, v in summary.items() if k != "rows" and not isinstance(v, str)})
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
