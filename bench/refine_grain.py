"""A texture tier from encoder-measured grain: does noise where the decode lost detail help?

AV1's film-grain synthesis is the classical precedent: the encoder measures what the decode
lacks and sends a few parameters; the decoder adds noise. Here, on the validation split
(never Kodak), per 32-px tile, the encoder measures the high-pass luma energy the standard
tier's output lacks against the original (high pass: the image minus its Gaussian blur,
σ = 1 px), and the decoder adds high-passed Gaussian noise of that energy (times --scales),
blended under the high tier's bound against the base. PSNR and LPIPS-VGG only; 2× crops
(original | base | standard | grain per scale) at the tile of largest deficit, for looking.

    python bench/refine_grain.py refine-avif --images 8 --rates 0.06,0.12,0.25 \
        --root /work/shared/data/train --split ../configs/validation-split.txt \
        --out ../docs/results/refine-validation/grain
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from refine_grid import (
    column_means,
    crop_panel,
    out_folder,
    print_row,
    psnr_and_lpips,
    validation_bases,
)
from refine_operating_points import load_codec_from, validation_args
from torch import Tensor


def gaussian_blur(y: Tensor, sigma: float) -> Tensor:
    r = int(3 * sigma + 0.5)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma * sigma))
    k = k / k.sum()
    y = F.pad(y, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    return F.conv2d(y, k.view(1, 1, -1, 1))


def high_pass(y: Tensor, sigma: float) -> Tensor:
    """(1, 1, H, W) minus its Gaussian blur."""
    return y - gaussian_blur(y, sigma)


def luma(img: Tensor) -> Tensor:
    """(1, 3, H, W) → (1, 1, H, W), BT.601."""
    return (0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2])[:, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name")
    validation_args(ap, 8)
    ap.add_argument("--rates", default="0.06,0.12,0.25")
    ap.add_argument("--tile", type=int, default=32, help="grain tile (px)")
    ap.add_argument("--sigma", type=float, default=1.0, help="high pass: blur σ (px)")
    ap.add_argument("--scales", default="0.5,1", help="grain energy × these")
    ap.add_argument("--out", default="", help="a folder for rows.json and the crops")
    a = ap.parse_args()

    from cdc.refine import blend
    from pipeline.metrics.lpips import LPIPS

    codec, step = load_codec_from(a.model)
    cfg = codec.config
    measure = functools.partial(psnr_and_lpips, LPIPS("vgg"))
    scales = [float(s) for s in a.scales.split(",")]
    out = out_folder(a.out)
    print(f"# {a.model} (step {step}): grain on {a.tile}-px tiles, scales {scales}", flush=True)
    rows = []
    for name, rate, x, base in validation_bases(a, codec):
        h, w = x.shape[-2:]
        _, y = blend.bounded(x, base, codec.refine(base, 1, 0.0, 0), cfg.table, cfg.tile,
                             cfg.bound_db)
        energy = [F.avg_pool2d(high_pass(luma(t), a.sigma) ** 2, a.tile, ceil_mode=True)
                  for t in (x, y)]
        deficit = (energy[0] - energy[1]).clamp(min=0)
        noise = high_pass(torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(0)),
                          a.sigma)
        noise = noise / noise.std()  # unit energy: the tile's deficit sets it
        amplitude = F.interpolate(deficit.sqrt(), size=(h, w), mode="bilinear",
                                  align_corners=False)
        row = {"image": name, "rate": rate}
        row["base_psnr"], row["base_lpips_vgg"] = measure(base, x)
        row["standard_psnr"], row["standard_lpips_vgg"] = measure(y, x)
        shown = [x, base, y]
        for s in scales:
            grain = (y + s * amplitude * noise).clamp(-1, 1)
            _, z = blend.bounded(x, base, grain, cfg.table, cfg.tile, cfg.bound_db_noisy)
            row[f"grain{s:g}_psnr"], row[f"grain{s:g}_lpips_vgg"] = measure(z, x)
            shown.append(z)
        rows.append(row)
        print_row(row)
        if out:
            i = int(torch.argmax(deficit.flatten()))
            tw = deficit.shape[-1]
            side = min(128, h, w)
            top = min(max((i // tw) * a.tile - 48, 0), h - side)
            left = min(max((i % tw) * a.tile - 48, 0), w - side)
            crop_panel([t[0] for t in shown], (top, left, side)).save(
                out / f"{Path(name).stem}-{rate:g}bpp.png")
    for rate in sorted({r["rate"] for r in rows}):
        rs = [r for r in rows if r["rate"] == rate]
        m = column_means(rs)
        grains = ", ".join(f"grain ×{s:g} {m[f'grain{s:g}_psnr']:.3f} dB "
                           f"{m[f'grain{s:g}_lpips_vgg']:.4f}" for s in scales)
        print(f"rate {rate:g}: base {m['base_psnr']:.3f} dB {m['base_lpips_vgg']:.4f}; standard "
              f"{m['standard_psnr']:.3f} dB {m['standard_lpips_vgg']:.4f}; {grains}", flush=True)
    if out:
        (out / "rows.json").write_text(json.dumps({"model": a.model, "step": step,
                                                   "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
