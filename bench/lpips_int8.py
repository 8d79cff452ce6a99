"""How far LPIPS-VGG through the int8 VGG16 copy (pipeline/metrics/trunk_int8.py, for
training losses on a lent GPU) is from the exact one, on training photos (never Kodak).

Centre 128-px crops of the first N training photos (validation split left out, a fixed
shuffle) against their AVIF decodes at a quality drawn from 0–60 per photo; prints the mean
LPIPS-VGG both ways, the mean and largest relative difference and the correlation.

    python bench/lpips_int8.py --root ../shared/data/train --split configs/validation-split.txt
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.metrics.lpips import LPIPS
from pipeline.metrics.trunk_int8 import int8_path, write_int8
from pipeline.training.refine_pairs import read_split, split_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="../shared/data/train")
    ap.add_argument("--split", default="configs/validation-split.txt")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--crop", type=int, default=128)
    args = ap.parse_args()
    if not int8_path("vgg16").exists():
        write_int8("vgg16")
    val = read_split(args.split)
    photos = [p for p in sorted(Path(args.root).rglob("*.*")) if split_name(str(p)) not in val]
    random.Random(1).shuffle(photos)
    xs, bs, c = [], [], args.crop
    for p in photos:
        a = np.asarray(Image.open(p).convert("RGB"))
        h, w = a.shape[:2]
        if min(h, w) < c:
            continue
        a = a[(h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c]
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "AVIF", quality=random.Random(str(p)).randint(0, 60),
                                speed=6)
        xs.append(a)
        bs.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
        if len(xs) == args.images:
            break

    def t(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255

    with torch.no_grad():
        exact = LPIPS("vgg")(t(xs), t(bs))
        approx = LPIPS("vgg", trunk="int8")(t(xs), t(bs))
    rel = (approx - exact).abs() / exact
    print(f"{len(xs)} crops: LPIPS-VGG exact {float(exact.mean()):.4f}, int8 "
          f"{float(approx.mean()):.4f}; relative difference mean {float(rel.mean()):.2%}, "
          f"max {float(rel.max()):.2%}; correlation "
          f"{float(np.corrcoef(exact.numpy(), approx.numpy())[0, 1]):.5f}")


if __name__ == "__main__":
    main()
