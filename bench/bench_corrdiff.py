"""CorrDiff vs CDC at equal bpp: PSNR, LPIPS, DISTS (and the end-to-end decoder alone).

Both codecs code the *same* latent (CorrDiff's weights file holds the frozen base CDC
weights), so their rates differ only by CorrDiff's section W (~10-15 bytes per image).
Every entry is encoded and decoded for real (the CorrDiff decode replays the stored
weights); results go through :func:`pipeline.evaluate.run_evaluation` (per-image CSV,
summary JSON, RD plots).

    .venv/bin/python bench/bench_corrdiff.py --corrdiff corrdiff-small \
        --images ../shared/data/kodak --scale 0.5 --limit 12 --out runs/bench-corrdiff

``--settings 3:0,8:0.8`` evaluates several (steps:γ) decode paths; ``--policies 2:1,1:0``
several encoder step rules (correct_last:skip_final), each as its own entry. Kodak is
for evaluation only; never train on it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import subprocess
import time
from pathlib import Path

from PIL import Image


def parse_pairs(text: str, kinds: tuple[type, type]) -> list[tuple]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, _, b = part.partition(":")
        out.append((kinds[0](a), kinds[1](b)))
    return out


def prepare_images(source: str, scale: float, limit: int | None, crop: int | None,
                   offset: int = 0):
    from pipeline.evaluate import load_images

    imgs = load_images(source)[offset:]
    imgs = imgs[:limit] if limit else imgs
    out = []
    for name, im in imgs:
        im = im.convert("RGB")
        if scale != 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.BICUBIC)
        if crop:
            left, top = max(0, (im.width - crop) // 2), max(0, (im.height - crop) // 2)
            im = im.crop((left, top, left + min(crop, im.width), top + min(crop, im.height)))
        out.append((name, im))
    return out


def load_codecs(corr_name: str, cdc_name: str | None):
    from cdc import CDCCodec
    from cdc.corrdiff import CorrDiffCodec

    corr = CorrDiffCodec.from_pretrained(corr_name)
    # A corrdiff file also holds the frozen base CDC network, so by default CDC runs from it.
    cdc = CDCCodec.from_pretrained(cdc_name or corr_name)
    return corr, cdc


def build_entries(corr, cdc, settings, policies, seed: int, e2e: bool = True) -> list:
    from cdc.corrdiff import CorrDiffCodec, CorrectionConfig
    from pipeline.evaluate import CallableEntry

    entries = []
    cache: dict[int, bytes] = {}  # the first CorrDiff stream of the current image

    def cached(encode):
        def run(img):
            data = encode(img)
            cache.clear()
            cache[id(img)] = data
            return data
        return run

    cached_one = False
    for steps, gamma in settings:
        entries.append(CallableEntry(
            f"CDC s{steps} g{gamma:g}", cdc.compress,
            lambda d, s=steps, g=gamma: cdc.decompress(d, steps=s, gamma=g, seed=seed),
            family=f"CDC γ={gamma:g}"))
        for last, skip in policies or [(corr.correction.correct_last, corr.correction.skip_final)]:
            c = CorrDiffCodec(corr.model, corr.decoder, CorrectionConfig(
                table=corr.correction.table, correct_last=last, skip_final=bool(skip)),
                corr.model_id, corr.weights_sha256, paths=[(steps, gamma, seed)])
            first, count = c.correction.steps_to_correct(steps)
            entries.append(CallableEntry(
                f"CorrDiff s{steps} g{gamma:g} steps{first}-{first + count - 1}",
                c.compress if cached_one else cached(c.compress),
                c.decompress, family=f"CorrDiff γ={gamma:g}"))
            cached_one = True
    if e2e:
        # Decodes the first CorrDiff entry's stream (its bytes include section W, unused here).
        entries.append(CallableEntry("E2E decoder only", lambda img: cache[id(img)],
                                     corr.decompress_e2e, family="end-to-end"))
    return entries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corrdiff", default="corrdiff-small", help="CorrDiff model name/path")
    ap.add_argument("--cdc", default=None, help="CDC model (default: the CorrDiff file's base)")
    ap.add_argument("--images", default="../shared/data/kodak")
    ap.add_argument("--scale", type=float, default=1.0, help="Downscale images first (e.g. 0.5)")
    ap.add_argument("--crop", type=int, default=None, help="Centre crop (square) after scaling")
    ap.add_argument("--limit", type=int, default=None, help="First N images only")
    ap.add_argument("--offset", type=int, default=0, help="Skip the first N images (sorted)")
    ap.add_argument("--settings", default="", help="steps:gamma pairs (default: model's)")
    ap.add_argument("--policies", default="", help="correct_last:skip_final pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metrics", default="psnr,lpips_alex,dists")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--out", default="runs/bench-corrdiff")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from pipeline.evaluate import run_evaluation, summary_table

    imgs = prepare_images(args.images, args.scale, args.limit, args.crop, args.offset)
    corr, cdc = load_codecs(args.corrdiff, args.cdc)
    settings = (parse_pairs(args.settings, (int, float))
                or [(corr.config.default_steps, corr.config.default_gamma)])
    policies = parse_pairs(args.policies, (int, int))
    entries = build_entries(corr, cdc, settings, policies, args.seed, not args.no_e2e)
    t0 = time.time()
    summary = run_evaluation(imgs, entries, args.out,
                             metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
                             plots=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False,
                            capture_output=True, text=True).stdout.strip()
    sizes = sorted({im.size for _, im in imgs})
    header = (f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, "
              f"{len(imgs)} images from {args.images} (scale {args.scale}, sizes {sizes}), "
              f"CorrDiff {corr.model_id} ({corr.weights_sha256[:12]}), CDC {cdc.model_id} "
              f"({cdc.weights_sha256[:12]}), {time.time() - t0:.0f} s")
    table = summary_table(summary)
    text = header + "\n\n" + table + "\n"
    Path(args.out, "table.md").write_text(text)
    Path(args.out, "run.json").write_text(json.dumps({"header": header, "args": vars(args)},
                                                     indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
