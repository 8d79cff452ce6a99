"""CorrDiff vs CDC at equal bpp: PSNR, LPIPS, DISTS (and the end-to-end decoder alone).

Both codecs code the *same* latent (CorrDiff's weights file holds the frozen base CDC
weights), so their rates differ only by CorrDiff's section W (~10-15 bytes per image).
Every entry is encoded and decoded for real (the CorrDiff decode replays the stored
weights); results go through :func:`pipeline.evaluation.runner.run_evaluation` (per-image CSV,
summary JSON, RD plots).

    .venv/bin/python bench/bench_corrdiff.py --corrdiff corrdiff-small \
        --images ../shared/data/kodak --scale 0.5 --limit 12 --out runs/bench-corrdiff

A long run splits across processes with ``--offset``/``--limit`` (one ``--out`` each);
``--merge OUT_A,OUT_B --out OUT`` then joins their per-image rows and chosen weights
into one table, paired counts and the perception–distortion plots (``pd_*.png``).

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
    from pipeline.evaluation.runner import load_images

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
    if cdc_name:
        return corr, CDCCodec.from_pretrained(cdc_name)
    # By default plain CDC on the very network CorrDiff corrects (its frozen base): a
    # CorrDiffCodec would replay its corrections whenever the settings match a stored path.
    base_id = str(corr.meta.get("base_model", "base"))
    base_sha = str(corr.meta.get("base_sha256") or corr.weights_sha256)
    return corr, CDCCodec(corr.model, base_id, base_sha, meta=corr.meta)


def build_entries(corr, cdc, settings, policies, seed: int, e2e: bool = True,
                  chosen: dict[str, list[float]] | None = None,
                  criteria: list[str] | None = None) -> list:
    from cdc.corrdiff import CorrDiffCodec, CorrectionConfig
    from pipeline.evaluation.runner import CallableEntry

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
            for criterion in criteria or [corr.correction.criterion]:
                c = CorrDiffCodec(corr.model, corr.decoder, CorrectionConfig(
                    table=corr.correction.table, correct_last=last, skip_final=bool(skip),
                    criterion=criterion), corr.model_id, corr.weights_sha256,
                    paths=[(steps, gamma, seed)])
                first, count = c.correction.steps_to_correct(steps)
                name = f"CorrDiff s{steps} g{gamma:g} steps{first}-{first + count - 1}"
                name += f" by {criterion}" if criteria else ""
                encode = recording(c, chosen, name) if chosen is not None else c.compress
                entries.append(CallableEntry(
                    name, encode if cached_one else cached(encode),
                    c.decompress, family=f"CorrDiff γ={gamma:g}"
                    + (f" by {criterion}" if criteria else "")))
                cached_one = True
    if e2e:
        # Decodes the first CorrDiff entry's stream (its bytes include section W, unused here).
        entries.append(CallableEntry("E2E decoder only", lambda img: cache[id(img)],
                                     corr.decompress_e2e, family="end-to-end"))
    return entries


def recording(codec, chosen: dict[str, list[float]], name: str):
    """``codec.compress`` that also keeps the blend weights the encoder chose (section W)."""
    def run(img):
        data = codec.compress(img)
        for path in codec.info(data)["corrdiff_paths"]:
            chosen.setdefault(name, []).extend(path["weights"])
        return data
    return run


def paired(per_image_csv: Path, metrics: list[str]) -> list[dict]:
    """For each CorrDiff entry, against the CDC entry with the same steps and γ on the same
    images: how many images each way per metric, and the mean difference."""
    import csv

    rows = list(csv.DictReader(per_image_csv.open()))
    by = {(r["entry"], r["image"]): r for r in rows}
    out = []
    for corr_entry in sorted({r["entry"] for r in rows if r["entry"].startswith("CorrDiff ")}):
        setting = " ".join(corr_entry.split()[1:3])  # "s1 g0"
        cdc_entry = f"CDC {setting}"
        images = sorted(i for (e, i) in by if e == corr_entry and (cdc_entry, i) in by)
        res = {"corrdiff": corr_entry, "cdc": cdc_entry, "images": len(images)}
        for m in metrics:
            if m not in rows[0] or not images:
                continue
            d = [float(by[(corr_entry, i)][m]) - float(by[(cdc_entry, i)][m]) for i in images]
            higher_better = m in ("psnr", "ms_ssim")
            better = sum(x > 0 if higher_better else x < 0 for x in d)
            worse = sum(x < 0 if higher_better else x > 0 for x in d)
            res[m] = {"mean_delta": sum(d) / len(d), "better": better, "worse": worse,
                      "equal": len(d) - better - worse}
        out.append(res)
    return out


def paired_table(pairs: list[dict], chosen: dict[str, list[float]], table) -> str:
    lines = ["| CorrDiff entry | vs | images | " + " | ".join(
        f"{m} Δ (better/worse)" for m in ("psnr", "lpips_alex", "dists")) + " |",
             "|---|---|---:|---:|---:|---:|"]
    for p in pairs:
        cells = [f"{p[m]['mean_delta']:+.4f} ({p[m]['better']}/{p[m]['worse']})" if m in p
                 else "–" for m in ("psnr", "lpips_alex", "dists")]
        lines.append(f"| {p['corrdiff']} | {p['cdc']} | {p['images']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Chosen blend weights (all corrected steps of all images):", "",
              "| entry | " + " | ".join(f"{w:.3g}" for w in table) + " |",
              "|---|" + "---:|" * len(table)]
    for name, ws in chosen.items():
        counts = [sum(abs(w - t) < 1e-3 for w in ws) for t in table]
        lines.append(f"| {name} | " + " | ".join(str(c) for c in counts) + " |")
    return "\n".join(lines)


def read_rows(dirs: list[Path]) -> list[dict]:
    """Per-image rows of finished runs, each (entry, image) once (the first run's wins)."""
    import csv

    seen: dict[tuple[str, str], dict] = {}
    for d in dirs:
        with Path(d, "per_image.csv").open() as f:
            for r in csv.DictReader(f):
                seen.setdefault((r["entry"], r["image"]), r)
    return list(seen.values())


def summary_of(rows: list[dict], metrics: list[str]) -> dict:
    """A :func:`pipeline.evaluation.runner.run_evaluation`-shaped summary of per-image rows: entry
    means over the images every entry has (so the table and plots of one run apply)."""
    entries = sorted({r["entry"] for r in rows})
    common = sorted(set.intersection(*({r["image"] for r in rows if r["entry"] == e}
                                       for e in entries)))
    cols = ["bpp"] + [m for m in metrics if m in rows[0]]
    out: dict = {"metrics": [m for m in metrics if m in rows[0]], "images": common,
                 "entries": {}}
    for e in entries:
        rs = [r for r in rows if r["entry"] == e and r["image"] in common]
        out["entries"][e] = {"family": rs[0]["family"],
                             **{c: sum(float(r[c]) for r in rs) / len(rs) for c in cols}}
    return out


def merge(dirs: list[Path], out: Path, metrics: list[str], table: list[float] | None) -> str:
    """Join split runs (``--offset``/``--limit``) into one report in ``out``."""
    from pipeline.evaluation.runner import plot_tradeoff, summary_table, write_csv

    rows = read_rows(dirs)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(sorted(rows, key=lambda r: (r["image"], r["entry"])), out / "per_image.csv")
    chosen: dict[str, list[float]] = {}
    for d in dirs:
        done = json.loads(Path(d, "paired.json").read_text())
        table = table or done.get("table")  # the model's weight grid (newer runs store it)
        for name, ws in done["weights"].items():
            chosen.setdefault(name, []).extend(ws)
    pairs = paired(Path(out, "per_image.csv"), metrics)
    if table is None:
        table = sorted({round(w, 6) for ws in chosen.values() for w in ws})
    summary = summary_of(rows, metrics)
    for perception in ("lpips_alex", "dists"):
        plot_tradeoff(summary, perception, out)
    text = ("Merged from " + ", ".join(str(d) for d in dirs) + f": means over "
            f"{len(summary['images'])} images\n\n" + summary_table(summary)
            + "\n\nPaired, per image (CorrDiff − CDC, same latent):\n\n"
            + paired_table(pairs, chosen, table) + "\n")
    Path(out, "paired.json").write_text(json.dumps(
        {"pairs": pairs, "weights": chosen, "table": list(table)}, indent=2))
    Path(out, "table.md").write_text(text)
    return text


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
    ap.add_argument("--criteria", default="", help="encoder criteria, e.g. space,pixels "
                                                   "(default: the model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metrics", default="psnr,lpips_alex,dists")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--out", default="runs/bench-corrdiff")
    ap.add_argument("--merge", default="", help="comma-separated finished --out folders to "
                                               "join into --out (no coding)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.merge:
        dirs = [Path(d.strip()) for d in args.merge.split(",") if d.strip()]
        print(merge(dirs, Path(args.out), metrics, None))
        return 0
    from pipeline.evaluation.runner import run_evaluation, summary_table

    imgs = prepare_images(args.images, args.scale, args.limit, args.crop, args.offset)
    corr, cdc = load_codecs(args.corrdiff, args.cdc)
    settings = (parse_pairs(args.settings, (int, float))
                or [(corr.config.default_steps, corr.config.default_gamma)])
    policies = parse_pairs(args.policies, (int, int))
    chosen: dict[str, list[float]] = {}
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    entries = build_entries(corr, cdc, settings, policies, args.seed, not args.no_e2e, chosen,
                            criteria)
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
    pairs = paired(Path(args.out, "per_image.csv"), metrics)
    text = (header + "\n\n" + table + "\n\nPaired, per image (CorrDiff − CDC, same latent):\n\n"
            + paired_table(pairs, chosen, corr.correction.table) + "\n")
    Path(args.out, "paired.json").write_text(json.dumps(
        {"pairs": pairs, "weights": chosen, "table": list(corr.correction.table)}, indent=2))
    Path(args.out, "table.md").write_text(text)
    Path(args.out, "run.json").write_text(json.dumps({"header": header, "args": vars(args)},
                                                     indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
