"""Pick a model's decode defaults and tiers on held-in photos (never on the Kodak test set).

Decodes centre crops of a few training photos at a grid of (steps, γ) and prints PSNR and
LPIPS-Alex for each, so the export step can record measured operating points:

    python bench/choose_operating_points.py --model cdc-small
        --images ../shared/data/train/bsds500 --n 6
"""

from __future__ import annotations

import argparse
import itertools
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.files import read_image  # noqa: E402
from pipeline.sources import list_images  # noqa: E402
from zoo import load_codec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="cdc-small")
    ap.add_argument("--images", default="../shared/data/train/bsds500")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--gammas", default="0,0.5,0.8,1.0")
    a = ap.parse_args()
    from pipeline.metrics import LPIPS

    lp = LPIPS(net="alex").eval()
    codec = load_codec(a.model)
    files = list_images(a.images)[:: max(1, len(list_images(a.images)) // a.n)][: a.n]
    crops = []
    for f in files:
        im = read_image(f).convert("RGB")
        x0, y0 = (im.width - a.crop) // 2, (im.height - a.crop) // 2
        crops.append(im.crop((x0, y0, x0 + a.crop, y0 + a.crop)))
    streams = [codec.compress(c) for c in crops]
    bpp = np.mean([8 * len(s) / a.crop**2 for s in streams])
    print(f"{a.model}: {len(crops)} crops of {a.crop}px from {a.images}, mean bpp {bpp:.4f}")
    print("steps  gamma  PSNR dB  LPIPS-Alex")
    for s, g in itertools.product([int(v) for v in a.steps.split(",")],
                                  [float(v) for v in a.gammas.split(",")]):
        ps, ls = [], []
        for c, d in zip(crops, streams):
            r = codec.decompress(d, steps=s, gamma=g, seed=0)
            x = torch.from_numpy(np.asarray(c, np.float32) / 255).permute(2, 0, 1)[None]
            y = torch.from_numpy(np.asarray(r, np.float32) / 255).permute(2, 0, 1)[None]
            mse = float(((x - y) ** 2).mean())
            ps.append(10 * np.log10(1 / max(mse, 1e-10)))
            with torch.no_grad():
                ls.append(float(lp(x, y)))
        print(f"{s:5d}  {g:5.2f}  {np.mean(ps):7.2f}  {np.mean(ls):10.4f}", flush=True)


if __name__ == "__main__":
    main()
