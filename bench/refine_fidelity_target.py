"""Constant fidelity against constant rate over a collection: the refine codec with a PSNR
target per image (``--psnr DB``: each photo gets the fewest bytes whose base layer reaches DB)
and with a rate target (``--rate BPP``: each photo gets the same bits per pixel), on the
validation split (never Kodak), PSNR and LPIPS-VGG of the standard tier only.

Each setting gives the collection's total bytes and its PSNR and LPIPS-VGG (mean, and the
worst photo); the PSNR-target curve is interpolated (in log bytes) at each rate setting's
total bytes, so the two are compared at the same bytes for the whole collection. It also
prints the encoder's time per image for both, the search's cost.

    python bench/refine_fidelity_target.py refine-avif --images 24 \
        --root /work/shared/data/train --split ../configs/validation-split.txt \
        --out ../docs/results/refine-validation/fidelity-target/rows.json
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np
from refine_grid import print_row, psnr_and_lpips
from refine_operating_points import load_codec_from, validation_args, validation_photo

STANDARD = (1, 0.0, 0)


def collection(rows: list[dict], setting: str) -> dict:
    """Totals and spreads of one setting over the photos."""
    rs = [r for r in rows if r["setting"] == setting]
    return {"setting": setting, "photos": len(rs),
            "bpp": 8 * sum(r["bytes"] for r in rs) / sum(r["pixels"] for r in rs),
            "psnr_mean": float(np.mean([r["psnr"] for r in rs])),
            "psnr_worst": float(np.min([r["psnr"] for r in rs])),
            "psnr_p10": float(np.percentile([r["psnr"] for r in rs], 10)),
            "lpips_vgg_mean": float(np.mean([r["lpips_vgg"] for r in rs])),
            "lpips_vgg_worst": float(np.max([r["lpips_vgg"] for r in rs])),
            "encode_s_mean": float(np.mean([r["encode_s"] for r in rs]))}


def at_bytes(curve: list[dict], bpp: float, key: str) -> float | None:
    """``key`` of the curve (sorted by bpp) interpolated in log bpp; None outside it."""
    xs = [np.log(c["bpp"]) for c in curve]
    if not xs or not xs[0] <= np.log(bpp) <= xs[-1]:
        return None
    return float(np.interp(np.log(bpp), xs, [c[key] for c in curve]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name")
    validation_args(ap, 24)
    ap.add_argument("--rates", default="0.06,0.12,0.25,0.5")
    ap.add_argument("--targets", default="26,29,32,35,38")
    ap.add_argument("--qualities", default="",
                    help="also fixed AVIF qualities of the base (constant quantiser, full size)")
    ap.add_argument("--out", default="", help="a JSON file for the rows and summary")
    ap.add_argument("--rows", nargs="*", default=[],
                    help="summarise these --out files of shards (--first) instead of running")
    a = ap.parse_args()
    if a.rows:
        rows = [r for path in a.rows for r in json.load(open(path))["rows"]]
        report(rows, settings_of(rows), "joined", None, a.out)
        return

    from cdc.image import array_to_tensor
    from pipeline.metrics.lpips import LPIPS
    from pipeline.training.refine_pairs import read_split

    codec, step = load_codec_from(a.model)
    codec.set_paths([STANDARD])
    measure = functools.partial(psnr_and_lpips, LPIPS("vgg"))
    settings = [("rate", float(r)) for r in a.rates.split(",") if r] + [
        ("psnr", float(t)) for t in a.targets.split(",") if t] + [
        ("quality", float(q)) for q in a.qualities.split(",") if q]
    rows: list[dict] = []
    for name in sorted(read_split(a.split))[a.first: a.first + a.images]:
        img = validation_photo(a.root, name)
        x = array_to_tensor(np.asarray(img))
        for kind, value in settings:
            codec.with_rate(**({"bpp": value} if kind == "rate" else {"psnr": value}
                               if kind == "psnr" else {"quality": int(value)}))
            t0 = time.perf_counter()
            (data, recons), = codec.compress_with_reconstructions([img])
            dt = time.perf_counter() - t0
            p, lv = measure(recons[STANDARD][None], x)
            row = {"image": name, "setting": f"{kind} {value:g}", "bytes": len(data),
                   "pixels": img.width * img.height, "bpp": 8 * len(data) / img.width / img.height,
                   "psnr": p, "lpips_vgg": lv, "encode_s": dt}
            rows.append(row)
            print_row(row)
    report(rows, [f"{k} {v:g}" for k, v in settings], a.model, step, a.out)


def settings_of(rows: list[dict]) -> list[str]:
    """The settings of joined rows, by kind (rates first), in their order of value."""
    names = {r["setting"] for r in rows}
    kinds = ["rate", "psnr", "quality"]
    return sorted(names, key=lambda n: (kinds.index(n.split()[0]), float(n.split()[1])))


def compare(summary: dict, kind: str, curve: list[dict], c: dict) -> None:
    """One rate setting against the ``kind`` settings' curve interpolated at its bytes."""
    same = {k: at_bytes(curve, c["bpp"], k) for k in
            ("psnr_mean", "psnr_worst", "psnr_p10", "lpips_vgg_mean", "lpips_vgg_worst")}
    if None in same.values():
        print(f"{c['setting']}: outside the {kind} settings' byte range", flush=True)
        return
    d = {k: same[k] - c[k] for k in same}
    summary["at_same_bytes"].append({"rate": c["setting"], "against": kind, **d})
    print(f"{c['setting']} -> {kind} settings at the same total bytes: PSNR mean "
          f"{d['psnr_mean']:+.2f}, worst {d['psnr_worst']:+.2f}, p10 {d['psnr_p10']:+.2f} "
          f"dB; LPIPS-VGG mean {d['lpips_vgg_mean']:+.4f}, worst "
          f"{d['lpips_vgg_worst']:+.4f}", flush=True)


def report(rows: list[dict], settings: list[str], model: str, step: int | None,
           out: str) -> None:
    """Print each setting's totals and the comparison at the same bytes; write ``out``."""
    summary: dict = {"model": model, "step": step,
                     "photos": len({r["image"] for r in rows}),
                     "settings": [collection(rows, s) for s in settings]}
    for c in summary["settings"]:
        print(f"{c['setting']:10s} {c['bpp']:.4f} bpp  PSNR mean {c['psnr_mean']:.2f} worst "
              f"{c['psnr_worst']:.2f} p10 {c['psnr_p10']:.2f}  LPIPS-VGG mean "
              f"{c['lpips_vgg_mean']:.4f} worst {c['lpips_vgg_worst']:.4f}  encode "
              f"{c['encode_s_mean']:.2f} s", flush=True)
    summary["at_same_bytes"] = []
    for kind in ("psnr", "quality"):
        curve = sorted((c for c in summary["settings"] if c["setting"].startswith(kind)),
                       key=lambda c: c["bpp"])
        for c in summary["settings"]:
            if c["setting"].startswith("rate") and curve:
                compare(summary, kind, curve, c)
    if out:
        with open(out, "w") as f:
            json.dump({**summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
