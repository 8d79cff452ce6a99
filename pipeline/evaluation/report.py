"""The files an evaluation leaves, made from its rows and summary: the per-image CSV, the
rate plots (bpp vs each metric) and perception–distortion plots, BD-rates against an anchor
codec, and the markdown table ``cdc eval`` prints.

Everything here reads a finished summary dict (and rows), never images or models, so
``cdc eval-merge`` and the benches redraw merged results without running anything.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.files import write_bytes_atomic

#: The metrics an evaluation can compute, in the order its tables list them.
METRICS = ("psnr", "ms_ssim", "lpips_alex", "lpips_vgg", "dists", "fid")
LABELS = {"bpp": "bpp", "psnr": "PSNR (dB) ↑", "ms_ssim": "MS-SSIM ↑",
          "lpips_alex": "LPIPS-Alex ↓", "lpips_vgg": "LPIPS-VGG ↓", "dists": "DISTS ↓",
          "fid": "FID ↓"}
PLOTS = {"psnr": "rd_psnr.png", "ms_ssim": "rd_ms_ssim.png", "lpips_alex": "rp_lpips_alex.png",
         "lpips_vgg": "rp_lpips_vgg.png", "dists": "rp_dists.png", "fid": "rp_fid.png"}
TRADEOFF_PLOT = "pd_{}.png"


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars made Python numbers and NaN/inf made None (JSON has neither)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


CSV_COLUMNS = ["image", "entry", "family", "width", "height", "bytes", "bpp", "psnr", "ms_ssim",
               "ms_ssim_scales", "lpips_alex", "lpips_vgg", "dists", "enc_s", "dec_s", "quality",
               "target_bpp", "error"]


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """One row per (image, entry); columns that no row has are left out."""
    extra = sorted({k for r in rows for k in r} - set(CSV_COLUMNS))
    cols = [c for c in CSV_COLUMNS + extra if any(c in r for r in rows)]
    path = Path(path)
    tmp = path.with_suffix(".csv.part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()
                        if k in cols})
    os.replace(tmp, path)



def plot_summary(summary: dict[str, Any], out_dir: str | os.PathLike) -> list[str]:
    """bpp vs each metric, one curve per family (points sorted by bpp); returns file names.

    Uses matplotlib's Agg canvas directly, so no global backend is switched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entries = summary["entries"]
    written = []
    for metric, fname in PLOTS.items():
        if metric not in summary["metrics"]:
            continue
        families: dict[str, list[tuple[float, float]]] = {}
        for s in entries.values():
            if s.get("bpp") is not None and s.get(metric) is not None:
                families.setdefault(s["family"], []).append((s["bpp"], s[metric]))
        if not families:
            continue
        fig = Figure(figsize=(5.5, 4), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for fam, pts in families.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fam)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(LABELS[metric])
        ax.set_title(f"{LABELS[metric].split(' ')[0]} vs rate ({len(summary['images'])} images)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(Path(out_dir) / fname)
        written.append(fname)
    for perc in ("lpips_alex", "dists"):
        if plot_tradeoff(summary, perc, out_dir):
            written.append(TRADEOFF_PLOT.format(perc))
    return written


def plot_tradeoff(summary: dict[str, Any], perception: str, out_dir: str | os.PathLike) -> bool:
    """The perception–distortion plane (PSNR → right, ``perception`` ↓ better): one point per
    entry, labelled with its bpp, so decoders of the *same* stream (CDC vs CorrDiff, steps,
    γ) can be compared where a rate plot stacks them on one vertical line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not {"psnr", perception} <= set(summary["metrics"]):
        return False
    families: dict[str, list[tuple[float, float, float, str]]] = {}
    for name, s in summary["entries"].items():
        if None not in (s.get("psnr"), s.get(perception), s.get("bpp")):
            families.setdefault(s["family"], []).append(
                (s["psnr"], s[perception], s["bpp"], name))
    if not families:
        return False
    fig = Figure(figsize=(6, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for fam, pts in families.items():
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=fam, s=28)
        for x, y, bpp, _ in pts:
            ax.annotate(f"{bpp:.3f}", (x, y), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel(LABELS["psnr"])
    ax.set_ylabel(LABELS[perception])
    ax.set_title(f"perception vs distortion ({len(summary['images'])} images; labels: bpp)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / TRADEOFF_PLOT.format(perception))
    return True


def add_bd_rates(summary: dict[str, Any], out_dir: str | os.PathLike, anchor: str = "AVIF",
                 metrics: Sequence[str] = ("lpips_alex", "dists")) -> list[str]:
    """BD-rate of every family against ``anchor`` on each metric, added to the summary
    (and its ``summary.json``); returns the lines ``cdc eval`` prints."""
    from pipeline.evaluation.bdrate import bd_rates

    got = bd_rates(summary, anchor, [m for m in metrics if m in summary["metrics"]])
    if not got:
        return []
    summary["bd_rate"] = {"anchor": anchor, "families": got}
    write_bytes_atomic(Path(out_dir) / "summary.json",
                       json.dumps(jsonable(summary), indent=2).encode())
    lines = [f"BD-rate vs {anchor} (negative: less rate for the same quality):"]
    for fam, res in got.items():
        cells = [f"{LABELS[m].split(' ')[0]} "
                 + ("–" if res[m] is None else f"{100 * res[m]:+.1f} %")
                 for m in metrics if m in res]
        lines.append(f"  {fam} ({res['points']} points): " + ", ".join(cells))
    return lines


def summary_table(summary: dict[str, Any], digits: dict[str, int] | None = None) -> str:
    """The summary as a markdown table (entry, family, bpp and each computed metric)."""
    fmt = {"bpp": 3, "psnr": 2, "ms_ssim": 4, "lpips_alex": 4, "lpips_vgg": 4, "dists": 4,
           "fid": 1, **(digits or {})}
    cols = ["bpp"] + [m for m in METRICS if m in summary["metrics"]]
    lines = ["| entry | family | " + " | ".join(LABELS[c] for c in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for name, s in summary["entries"].items():
        cells = []
        for c in cols:
            v = s.get(c)
            cells.append("–" if v is None else f"{v:.{fmt[c]}f}")
        lines.append(f"| {name} | {s['family']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
