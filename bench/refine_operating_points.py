"""Choose the refine codec's operating points on the validation split (never Kodak).

For each validation photo and target rate: the base layer as the codec codes it, the
refiner's output along each candidate decode path, blended under each candidate PSNR bound;
and AVIF at the same total bytes. Measured with PSNR and LPIPS-VGG only (a training-side
metric; LPIPS-Alex, DISTS and FID are kept for evaluation). The rule: the standard tier's
bound is the largest whose worst image stays within 0.4 dB of AVIF at the same bytes (0.1 dB
under the 0.5 dB target, a margin for the small sample); the high tier is the candidate
γ > 0 path and bound with the lowest mean LPIPS-VGG.

    python bench/refine_operating_points.py runs/refine-small --images 12 \
        --out docs/results/refine-validation
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PATHS = [(1, 0.0, 0), (1, 0.6, 0), (2, 0.6, 0), (3, 0.6, 0)]  # γ 0.6: the trained start
BOUNDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5]


def load_codec_from(run_or_model: str):
    from zoo import codec_from_bytes, load_codec

    p = Path(run_or_model)
    if p.is_dir():  # a training run (or relay): packed in memory, nothing shipped
        from pipeline.training.train_refine import pack_run

        which = os.environ.get("REFINE_WEIGHTS", "ema")  # "model": the raw weights, no EMA
        data, _, step = pack_run(p, which=which)
        return codec_from_bytes(data, str(p)), step
    c = load_codec(run_or_model)
    return c, int(c.meta.get("train_steps", 0))


def validation_args(ap: argparse.ArgumentParser, images: int, name: str = "--images"
                    ) -> argparse.ArgumentParser:
    """The validation split's options every bench of the refine codec shares (never Kodak)."""
    ap.add_argument("--split", default="configs/validation-split.txt")
    ap.add_argument("--root", default="../shared/data/train")
    ap.add_argument(name, type=int, default=images, help="the first N photos of the split")
    ap.add_argument("--first", type=int, default=0,
                    help="start at this photo of the split (run shards on several cores, "
                         "then join their rows.json with --rows)")
    return ap


def validation_photo(root: str, name: str) -> Image.Image:
    """A validation photo in sRGB RGB, as training and the codec's reader see it (its colour
    profile applied; before 2026-12-07 the benches read the raw samples of the few photos
    with Adobe RGB or camera profiles)."""
    from pipeline.training.image_crops import read_image

    return read_image(str(Path(root) / name)).convert("RGB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name")
    validation_args(ap, 12)
    ap.add_argument("--rates", default="0.05,0.12,0.3")
    ap.add_argument("--out", default="")
    ap.add_argument("--rows", default="",
                    help="re-summarise the rows.json of an earlier run (comma-separated: shards)")
    a = ap.parse_args()
    if a.rows:
        files = [Path(f) for f in a.rows.split(",")]  # several: the shards of one run
        rows = [r for f in files for r in json.loads(f.read_text())]
        summary = summarize(rows, sorted({r["rate"] for r in rows}))
        olds = [json.loads((f.parent / "summary.json").read_text()) for f in files]
        summary.update({k: olds[0][k] for k in ("model", "train_steps") if k in olds[0]})
        summary["images"] = [n for o in olds for n in o.get("images", [])]
        print({k: v for k, v in summary.items() if k not in ("images", "paths")})
        if a.out:
            Path(a.out).mkdir(parents=True, exist_ok=True)
            (Path(a.out) / "rows.json").write_text(json.dumps(rows, indent=1))
            (Path(a.out) / "summary.json").write_text(json.dumps(summary, indent=1))
        return
    from cdc.image import array_to_tensor
    from cdc.refine import base_layer, blend
    from pipeline.evaluation.classical import CODECS as CLASSICAL
    from pipeline.metrics.lpips import LPIPS
    from pipeline.training.refine_pairs import read_split

    codec, step = load_codec_from(a.model)
    cfg = codec.config
    lp = LPIPS("vgg")
    avif = CLASSICAL["avif"]
    names = sorted(read_split(a.split))[a.first: a.first + a.images]
    rates = [float(r) for r in a.rates.split(",")]

    def measure(y: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
        mse = float(((y.clamp(-1, 1) - x) ** 2).mean()) / 4
        with torch.no_grad():
            d = float(lp((y.clamp(-1, 1) + 1) / 2, (x + 1) / 2))
        return 10 * math.log10(1 / max(mse, 1e-12)), d

    rows = []
    for name in names:
        img = validation_photo(a.root, name)
        arr = np.asarray(img)
        h, w = arr.shape[:2]
        x = array_to_tensor(arr)
        for rate in rates:
            codec.set_paths(PATHS)
            target = max(1, int(rate * h * w / 8) - codec._overhead(h, w))
            choice = base_layer.search(arr, target, cfg)
            base = base_layer.decode_choice(choice, h, w)
            total = len(choice.data) + codec._overhead(h, w)  # a bound on the stream's size
            row = {"image": name, "rate": rate, "bpp": 8 * total / (h * w),
                   **avif_at_bytes(avif, img, x, total, measure)}
            row["base_psnr"], row["base_lpips_vgg"] = measure(base, x)
            cond = codec.condition(base)
            for steps, gamma, seed in PATHS:
                refined = codec.refine(base, steps, gamma, seed, cond)
                key = f"s{steps}g{gamma:g}"
                row[f"{key}_raw_psnr"], row[f"{key}_raw_lpips_vgg"] = measure(refined, x)
                for bound in BOUNDS:
                    _, out = blend.bounded(x, base, refined, cfg.table, cfg.tile, bound)
                    out = ((out + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
                    p, d = measure(out, x)
                    row[f"{key}_b{bound:g}_psnr"], row[f"{key}_b{bound:g}_lpips_vgg"] = p, d
            rows.append(row)
            print(f"{name} {rate:g} bpp: AVIF {row['avif_psnr']:.2f} dB "
                  f"{row['avif_lpips_vgg']:.3f} | base {row['base_psnr']:.2f} "
                  f"{row['base_lpips_vgg']:.3f} | s1 b0.3 {row['s1g0_b0.3_psnr']:.2f} "
                  f"{row['s1g0_b0.3_lpips_vgg']:.3f} | s1 raw {row['s1g0_raw_psnr']:.2f} "
                  f"{row['s1g0_raw_lpips_vgg']:.3f}", flush=True)
    summary = summarize(rows, rates)
    summary["model"], summary["train_steps"], summary["images"] = a.model, step, names
    for k, v in summary["paths"].items():
        print(k, {a: round(b, 4) for a, b in v.items()})
    print({k: v for k, v in summary.items() if k not in ("images", "paths")})
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))
        (out / "summary.json").write_text(json.dumps(summary, indent=1))


def avif_at_bytes(avif, img: Image.Image, x: torch.Tensor, nbytes: int, measure) -> dict:
    """AVIF at exactly ``nbytes``: PSNR and LPIPS-VGG interpolated (linear in bytes) between
    the two qualities whose files bracket it. Matching by the nearest quality instead lets
    AVIF overshoot the budget at low rates (a quality step is 5-15 % of the bytes there).
    Below quality 0's size AVIF at full size cannot reach the budget: ``avif_reaches`` is
    False and the row's AVIF figures are quality 0's (over budget, flattering AVIF)."""
    from cdc.image import array_to_tensor

    sizes: dict[int, bytes] = {}

    def at(q: int) -> int:
        if q not in sizes:
            sizes[q] = avif.encode(img, q)
        return len(sizes[q])

    def scores(q: int) -> tuple[float, float]:
        return measure(array_to_tensor(np.asarray(avif.decode(sizes[q]))), x)

    lo, hi = avif.qmin, avif.qmax
    if at(lo) >= nbytes or at(hi) <= nbytes:
        q = lo if at(lo) >= nbytes else hi
        (p, d), reach = scores(q), at(lo) <= nbytes
        return {"avif_bpp": 8 * at(q) / (img.width * img.height), "avif_psnr": p,
                "avif_lpips_vgg": d, "avif_reaches": reach, "avif_quality": q}
    while hi - lo > 1:  # at(lo) < nbytes < at(hi)
        mid = (lo + hi) // 2
        if at(mid) <= nbytes:
            lo = mid
        else:
            hi = mid
    frac = (nbytes - at(lo)) / max(1, at(hi) - at(lo))
    (p0, d0), (p1, d1) = scores(lo), scores(hi)
    return {"avif_bpp": 8 * nbytes / (img.width * img.height),
            "avif_psnr": p0 + frac * (p1 - p0), "avif_lpips_vgg": d0 + frac * (d1 - d0),
            "avif_reaches": True, "avif_quality": lo + frac}


def summarize(rows: list[dict], rates: list[float]) -> dict:
    """Per path and bound: mean LPIPS-VGG and PSNR, worst PSNR vs AVIF; and the choices."""
    # Against AVIF only where AVIF at full size reaches the same bytes (else it is over
    # budget and the comparison flatters it); the other rows still count for LPIPS means.
    reach = [r for r in rows if r.get("avif_reaches", True)] or rows
    out: dict = {"paths": {}, "rows_avif_reaches": len(reach), "rows": len(rows)}
    for steps, gamma, _ in PATHS:
        key = f"s{steps}g{gamma:g}"
        for bound in BOUNDS:
            k = f"{key}_b{bound:g}"
            gaps = [r[f"{k}_psnr"] - r["avif_psnr"] for r in reach]
            out["paths"][k] = {
                "mean_psnr": float(np.mean([r[f"{k}_psnr"] for r in rows])),
                "mean_lpips_vgg": float(np.mean([r[f"{k}_lpips_vgg"] for r in rows])),
                "worst_psnr_vs_avif": float(min(gaps)),
                "mean_lpips_vgg_vs_avif": float(np.mean(
                    [r[f"{k}_lpips_vgg"] / r["avif_lpips_vgg"] for r in reach]))}
    out["avif"] = {"mean_psnr": float(np.mean([r["avif_psnr"] for r in rows])),
                   "mean_lpips_vgg": float(np.mean([r["avif_lpips_vgg"] for r in rows]))}
    # 0.1 dB of margin under the 0.5 dB target: a few validation photos are a small sample
    ok = [b for b in BOUNDS if out["paths"][f"s1g0_b{b:g}"]["worst_psnr_vs_avif"] >= -0.4]
    out["chosen_standard_bound"] = max(ok) if ok else min(BOUNDS)
    # The high tier: the γ > 0 path and bound with the lowest mean LPIPS-VGG (a larger bound
    # is not better by itself: past a point the blend keeps tiles the refiner made worse).
    noisy = {(f"s{s}g{g:g}", b): out["paths"][f"s{s}g{g:g}_b{b:g}"]["mean_lpips_vgg"]
             for s, g, _ in PATHS if g > 0 for b in BOUNDS}
    out["chosen_high_path"], out["chosen_high_bound"] = min(noisy, key=noisy.get)
    return out


if __name__ == "__main__":
    main()
