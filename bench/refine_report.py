"""Markdown report of a `cdc eval --rates` run of the refine codec vs the classical codecs.

Per rate: every tier of ours and each classical codec at the same bytes (PSNR, MS-SSIM,
LPIPS-Alex, LPIPS-VGG, DISTS, FID), ours/AVIF ratios, per-image worst case of PSNR vs AVIF,
images where the standard tier beats AVIF on DISTS; then the issue's targets, met or not.

    python bench/refine_report.py OUT > OUT/README.md
    python bench/refine_report.py OUT --previous OLD_OUT > OUT/report.md

``--previous``: an earlier version's evaluation of the same images and rates (say, the
model shipped before): its tiers against this run's, rate by rate, with the images each
metric improved on. The last section is the compact table the README shows.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path

METRICS = ("psnr", "ms_ssim", "lpips_alex", "lpips_vgg", "dists")
ENTRY = re.compile(r"^(?P<model>\S+) (?P<rate>[0-9.e-]+)bpp (?P<tier>\S+)$")


def load(out: Path) -> tuple[dict, dict, dict[str, dict[str, str]]]:
    """(summary, per-image rows by (image, entry), our entries by rate and tier)."""
    s = json.loads((out / "summary.json").read_text())
    with open(out / "per_image.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r.get("error")]
    per = {(r["image"], r["entry"]): r for r in rows}
    rates: dict[str, dict[str, str]] = defaultdict(dict)
    for name in s["entries"]:
        m = ENTRY.match(name)
        if m and "@" not in m["model"]:
            rates[m["rate"]][m["tier"]] = name
    return s, per, rates


def main(out: Path, previous: Path | None = None) -> None:
    s, per, rates = load(out)
    print(f"# {next(iter(s['entries'])).split()[0]} on {len(s['images'])} images\n")
    print(f"Evaluated {s['created']} on {s['device']}; FID: {s.get('fid_protocol')}.\n")
    targets = []
    for rate, tiers in sorted(rates.items(), key=lambda kv: float(kv[0])):
        first = next(iter(tiers.values()))
        classical = {e.split("@")[0]: e for e in s["entries"] if e.endswith("@" + first)}
        print(f"## target {rate} bpp\n")
        cols = [m for m in (*METRICS, "fid") if any(m in v for v in s["entries"].values())]
        print("| entry | bpp | " + " | ".join(cols) + " |")
        print("|---|---:|" + "---:|" * len(cols))
        avif = s["entries"].get(classical.get("avif", ""), {})
        for label, name in [*((f"**{t}**", n) for t, n in tiers.items()),
                            *((c.upper(), n) for c, n in classical.items())]:
            e = s["entries"][name]
            print(f"| {label} | {e['bpp']:.4f} | " + " | ".join(
                f"{e[m]:.4f}" if e.get(m) is not None else "–" for m in cols) + " |")
        if avif and "standard" in tiers:
            std = s["entries"][tiers["standard"]]
            ratio = {m: std[m] / avif[m] for m in ("dists", "lpips_alex", "fid")
                     if std.get(m) is not None and avif.get(m)}
            imgs = s["images"]
            gaps = [float(per[(i, tiers["standard"])]["psnr"]) - float(
                per[(i, classical["avif"])]["psnr"]) for i in imgs
                if (i, tiers["standard"]) in per and (i, classical["avif"]) in per]
            wins = sum(float(per[(i, tiers["standard"])]["dists"]) < float(
                per[(i, classical["avif"])]["dists"]) for i in imgs
                if (i, tiers["standard"]) in per and (i, classical["avif"]) in per
                and per[(i, tiers["standard"])].get("dists"))
            worst = min(gaps) if gaps else float("nan")
            print("\nstandard vs AVIF at the same bytes: " + ", ".join(
                f"{m} ×{v:.3f}" for m, v in ratio.items()) +
                f"; PSNR worst image {worst:+.2f} dB, mean {sum(gaps) / max(1, len(gaps)):+.2f}"
                f" dB; DISTS better on {wins}/{len(gaps)} images")
            hi = s["entries"][tiers["high"]] if "high" in tiers else {}
            if hi and avif.get("dists"):
                print(f"high vs AVIF: DISTS ×{hi['dists'] / avif['dists']:.3f}, PSNR "
                      f"{hi['psnr'] - avif['psnr']:+.2f} dB")
            targets.append((float(rate), worst, ratio, std, avif, hi))
        print()
    from pipeline.evaluation.bdrate import bd_rates

    bd = bd_rates(s, "AVIF", [m for m in ("psnr", "dists", "lpips_alex") if m in s["metrics"]])
    if bd:
        print("## BD-rate vs AVIF (negative: fewer bytes for the same quality)\n")
        print("| family | points | PSNR | DISTS | LPIPS-Alex |\n|---|---:|---:|---:|---:|")
        for fam, v in bd.items():
            cells = [f"{100 * v[m]:+.1f} %" if v.get(m) is not None else "–"
                     for m in ("psnr", "dists", "lpips_alex")]
            print(f"| {fam} | {v.get('points')} | " + " | ".join(cells) + " |")
        print()
    print("## Targets (issue 24; every rate from 0.05 to 0.5 bpp)\n")
    for rate, worst, ratio, std, avif, hi in targets:
        if not 0.05 <= rate <= 0.5:
            continue
        if hi and avif.get("dists"):
            r = hi["dists"] / avif["dists"]
            print(f"- {rate:g} bpp: high DISTS ≤ 0.6 × AVIF: {'met' if r <= 0.6 else 'MISSED'}"
                  f" (×{r:.3f})")
        if rate <= 0.15:
            for m, cap in (("dists", 0.12), ("lpips_alex", 0.15)):
                ok = std.get(m) is not None and std[m] <= cap
                print(f"- {rate:g} bpp: standard {m} ≤ {cap}: {'met' if ok else 'MISSED'}"
                      f" ({std[m] if std.get(m) is None else round(std[m], 4)})")
        checks = [("standard PSNR ≥ AVIF − 0.5 dB on every image", worst >= -0.5,
                   f"worst {worst:+.2f} dB"),
                  ("standard DISTS ≤ 0.75 × AVIF", ratio.get("dists", 9) <= 0.75,
                   f"×{ratio.get('dists', float('nan')):.3f}"),
                  ("standard LPIPS-Alex ≤ 0.75 × AVIF", ratio.get("lpips_alex", 9) <= 0.75,
                   f"×{ratio.get('lpips_alex', float('nan')):.3f}"),
                  ("standard FID lower", ratio.get("fid", 9) < 1,
                   f"×{ratio.get('fid', float('nan')):.3f}")]
        for what, ok, got in checks:
            print(f"- {rate:g} bpp: {what}: {'met' if ok else 'MISSED'} ({got})")


    if previous is not None:
        compare(s, per, rates, previous)
    readme_table(s, rates)


def compare(s: dict, per: dict, rates: dict[str, dict[str, str]], previous: Path) -> None:
    """This run's tiers against an earlier version's, same images, rate by rate."""
    ps, pper, prates = load(previous)
    same = sorted(set(s["images"]) & set(ps["images"]))
    print(f"\n## Against the previous version ({previous}, {len(same)} same images)\n")
    print("| target | tier | " + " | ".join(f"{m} before → now (better on)" for m in
                                            ("psnr", "lpips_alex", "lpips_vgg", "dists")) + " |")
    print("|---|---|" + "---|" * 4)
    for rate, tiers in sorted(rates.items(), key=lambda kv: float(kv[0])):
        for tier, name in tiers.items():
            old = prates.get(rate, {}).get(tier)
            if old is None:
                continue
            cells = []
            for m in ("psnr", "lpips_alex", "lpips_vgg", "dists"):
                pairs = [(float(pper[(i, old)][m]), float(per[(i, name)][m])) for i in same
                         if (i, old) in pper and (i, name) in per and pper[(i, old)].get(m)
                         and per[(i, name)].get(m)]
                if not pairs:
                    cells.append("–")
                    continue
                a = sum(p[0] for p in pairs) / len(pairs)
                b = sum(p[1] for p in pairs) / len(pairs)
                better = sum((q > p) if m == "psnr" else (q < p) for p, q in pairs)
                cells.append(f"{a:.3f} → {b:.3f} ({better}/{len(pairs)})")
            print(f"| {rate} | {tier} | " + " | ".join(cells) + " |")


def readme_table(s: dict, rates: dict[str, dict[str, str]]) -> None:
    """The compact table of the README: ours per tier, then the classical codecs, per rate."""
    print("\n## README table\n")
    print("| target | entry | bpp | PSNR dB | MS-SSIM | LPIPS-Alex | LPIPS-VGG | DISTS | FID |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    labels = {"avif": "AVIF", "heic": "HEIC (x265)", "jpeg": "JPEG", "webp": "WebP",
              "jxl": "JPEG XL"}
    for rate, tiers in sorted(rates.items(), key=lambda kv: float(kv[0])):
        first = next(iter(tiers.values()))
        classical = {e.split("@")[0]: e for e in s["entries"] if e.endswith("@" + first)}
        rows = [(f"`{t}`" if t != "standard" else "**`standard`**", n) for t, n in tiers.items()]
        rows += [(labels.get(c, c), n) for c, n in classical.items()]
        for k, (label, name) in enumerate(rows):
            e = s["entries"][name]
            cells = [f"{e['bpp']:.3f}", f"{e['psnr']:.2f}"] + [
                f"{e[m]:.3f}" if e.get(m) is not None else "–"
                for m in ("ms_ssim", "lpips_alex", "lpips_vgg", "dists")]
            cells.append(f"{e['fid']:.0f}" if e.get("fid") is not None else "–")
            print(f"| {rate if k == 0 else ''} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--previous", type=Path, default=None)
    a = ap.parse_args()
    main(a.out, a.previous)
