"""Evaluation runner: codecs ("entries") × images → per-image CSV, summary JSON, RD plots.

An *entry* is any object with ``name``, ``encode(img) -> bytes`` and
``decode(bytes) -> img`` (optionally ``family`` to group curves). The diffusion codec
is wrapped by the caller at each rate / decode setting; classical baselines come as
fixed-quality entries (:func:`classical_entries`) or as entries that hit, image by
image, the bpp another entry reached (:func:`matched_bpp_entries`).

bpp always comes from the real byte string: ``8 * len(data) / (H * W)``. Summary
values are means over images of per-image values (PSNR in dB averaged, as in most
papers); FID is computed over all 256×256 patches of the set and reported only when
there are at least ``min_fid_patches`` of them.

This module runs the evaluation (images, metrics, rows, summary); the entries are built in
:mod:`pipeline.evaluation.entries`, the progress folder that lets a stopped run go on is
:mod:`pipeline.evaluation.progress`, and the CSV, plots, BD-rates and table are
:mod:`pipeline.evaluation.report`. Their public names are importable from here too.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import pipeline.metrics as quality_metrics
from pipeline.evaluation.entries import (
    CallableEntry,
    ClassicalEntry,
    Entry,
    MatchedBppEntry,
    classical_entries,
    family_of,
    matched_bpp_entries,
    ordered_entries,
)
from pipeline.evaluation.progress import open_progress
from pipeline.evaluation.report import (
    CSV_COLUMNS,
    LABELS,
    METRICS,
    PLOTS,
    TRADEOFF_PLOT,
    add_bd_rates,
    plot_summary,
    plot_tradeoff,
    summary_table,
    write_csv,
)
from pipeline.evaluation.report import jsonable as _jsonable
from pipeline.files import read_image, write_bytes_atomic
from pipeline.metrics import frechet_distance, patch_count
from pipeline.metrics.fid import inception
from pipeline.sources import list_images

log = logging.getLogger(__name__)

MIN_FID_PATCHES = 128  # Kodak gives 192; below this FID is too noisy to report


# -- images and metrics ------------------------------------------------------------------------


def load_images(images: Any) -> list[tuple[str, Image.Image]]:
    """(name, RGB image) pairs from a folder / glob / list file / list of paths, or from
    PIL images or (name, image) pairs given directly."""
    if isinstance(images, (str, os.PathLike)):
        images = list_images(os.fspath(images))
    out: list[tuple[str, Image.Image]] = []
    for i, item in enumerate(images):
        if isinstance(item, tuple):
            name, img = item
        elif isinstance(item, Image.Image):
            name, img = f"image{i:03d}", item
        else:
            path = os.fspath(item)
            name, img = Path(path.split("://")[-1]).stem, read_image(path)
        out.append((str(name), img.convert("RGB")))
    seen: dict[str, int] = {}
    for i, (name, img) in enumerate(out):  # make names unique for the CSV
        if name in seen:
            out[i] = (f"{name}_{i}", img)
        seen[name] = i
    if not out:
        raise ValueError("no images to evaluate")
    return out


def to_tensor(img: Image.Image, device: str | torch.device = "cpu") -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).to(device)


class _Meters:
    """The requested metrics, loaded once; reference features cached per image."""

    def __init__(self, metrics: Sequence[str], device: str):
        self.m, self.device, self.names = quality_metrics, device, list(metrics)
        self.nets: dict[str, Any] = {}
        for name in self.names:  # load (and fail on missing weights) before any encoding
            if name == "lpips_alex":
                self.nets[name] = quality_metrics.LPIPS("alex").to(device)
            elif name == "lpips_vgg":
                self.nets[name] = quality_metrics.LPIPS("vgg").to(device)
            elif name == "dists":
                self.nets[name] = quality_metrics.DISTS().to(device)
            elif name == "fid":
                inception(str(torch.device(device)))  # sha256 check + load, once

    @torch.no_grad()
    def reference(self, x: torch.Tensor) -> dict[str, Any]:
        return {k: net.features(x) for k, net in self.nets.items()}

    @torch.no_grad()
    def measure(self, x: torch.Tensor, ref: dict[str, Any], y: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "psnr" in self.names:
            out["psnr"] = self.m.psnr(x, y).item()
        if "ms_ssim" in self.names:
            out["ms_ssim"] = self.m.ms_ssim(x, y).item()
            out["ms_ssim_scales"] = self.m.ms_ssim_levels(*x.shape[-2:])
        for k, net in self.nets.items():
            out[k] = net.compare(ref[k], net.features(y)).item()
        return out

    def patches(self, x: torch.Tensor, size: int) -> np.ndarray:
        return self.m.inception_features(self.m.extract_patches(x, size), self.device)


# -- the run -------------------------------------------------------------------------------------


def run_evaluation(images: Any, entries: Sequence[Any], out_dir: str | os.PathLike,
                   metrics: Sequence[str] = METRICS, device: str = "cpu",
                   min_fid_patches: int = MIN_FID_PATCHES, fid_patch: int = 256,
                   plots: bool = True, save_decoded: bool = False,
                   resume: bool = True, shard: tuple[int, int] | None = None
                   ) -> dict[str, Any]:
    """Evaluate every entry on every image; write ``per_image.csv``, ``summary.json`` and
    plots into ``out_dir``; return the summary dict.

    A failure of one entry on one image is recorded in the CSV's ``error`` column and
    left out of the means; missing metric weights fail at once, before any encoding.
    Each finished image is kept in ``out_dir/.progress/`` (its rows and FID features), so
    an evaluation that was stopped goes on where it stopped when run again with the same
    entries, metrics and images (``resume=False`` starts over); the folder goes at the end.

    ``shard=(k, n)``: evaluate only images ``i`` with ``i % n == k`` (other images are taken
    from the progress folder if there), so n processes or machines sharing ``out_dir`` split
    one evaluation. A shard that finds images still missing returns ``{"shard": ...,
    "missing": [...]}`` and writes no summary; whichever run finds every image done writes it.
    """
    metrics = _checked_request(metrics, shard)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = ordered_entries(entries)
    imgs = load_images(images)
    n_patches = sum(patch_count(im.height, im.width, fid_patch) for _, im in imgs)
    want_fid = "fid" in metrics and n_patches >= max(min_fid_patches, 2)
    meters = _Meters([m for m in metrics if m != "fid" or want_fid], device)
    rows: list[dict[str, Any]] = []
    ref_feats: list[np.ndarray] = []
    rec_feats: dict[str, dict[int, np.ndarray]] = {e.name: {} for e in entries}
    progress = open_progress(out, entries, metrics, want_fid, fid_patch, imgs, resume)
    missing: list[str] = []

    def keep(i: int, done: tuple[list[dict[str, Any]], dict[str, np.ndarray]]) -> None:
        """Take image ``i``'s rows and FID features from the progress folder."""
        rows.extend(done[0])
        if want_fid:
            ref_feats.append(done[1]["__ref__"])
            for name, f in done[1].items():
                if name != "__ref__":
                    rec_feats[name][i] = f

    for i, (iname, img) in enumerate(imgs):
        done = progress.load(i)
        if done is None and shard is not None and i % shard[1] != shard[0]:
            missing.append(iname)  # another shard's image, not finished (yet)
            continue
        if done is not None:
            keep(i, done)
            log.info("%s: kept from the stopped run", iname)
            continue
        done = _evaluate_image(iname, img, entries, meters, device, want_fid, fid_patch,
                               out / "decoded" if save_decoded else None, metrics)
        progress.save(i, *done)
        keep(i, done)
    if missing:
        # The other shards may have finished while this one ran (two shards ending together
        # would otherwise each leave the summary to the other): look again, and if every
        # image is kept now, gather all of them from the progress folder in image order.
        kept_now = [progress.load(i) for i in range(len(imgs))]
        if all(k is not None for k in kept_now):
            missing = []
            rows.clear()
            ref_feats.clear()
            for per_image in rec_feats.values():
                per_image.clear()
            for i, done in enumerate(kept_now):
                keep(i, done)
    if missing:
        log.warning("%s: shard %d/%d done; %d image(s) of other shards not finished yet, so "
                    "no summary (run again when they are)", out, shard[0], shard[1], len(missing))
        return {"shard": list(shard), "missing": missing, "images": len(imgs)}
    summary = _summarize(rows, entries, imgs, metrics, device, ref_feats, rec_feats,
                         min_fid_patches, fid_patch, n_patches)
    _write_outputs(summary, rows, out, plots)
    progress.clear()
    return summary


def _write_outputs(summary: dict[str, Any], rows: list[dict[str, Any]], out: Path,
                   plots: bool) -> None:
    """``per_image.csv``, the plots and ``summary.json`` (last: its presence means done)."""
    write_csv(rows, out / "per_image.csv")
    summary["files"] = {"csv": "per_image.csv",
                        "plots": plot_summary(summary, out) if plots else []}
    write_bytes_atomic(out / "summary.json", json.dumps(_jsonable(summary), indent=2).encode())


def _checked_request(metrics: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The metrics, each once, in order; a ValueError for an unknown one or a bad shard."""
    if shard is not None:
        k, n = shard
        if not (isinstance(k, int) and isinstance(n, int) and n >= 1 and 0 <= k < n):
            raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}")
    metrics = list(dict.fromkeys(metrics))
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {', '.join(METRICS)}")
    return metrics


def _evaluate_image(iname: str, img: Image.Image, entries: Sequence[Any], meters: _Meters,
                    device: str, want_fid: bool, fid_patch: int, save_to: Path | None,
                    metrics: Sequence[str]
                    ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every entry on one image: (its rows, its FID features: ``__ref__`` and one per entry
    that decoded), the same pair the progress folder keeps for a finished image."""
    x = to_tensor(img, device)
    ref = meters.reference(x)
    feats: dict[str, np.ndarray] = {}
    if want_fid:
        feats["__ref__"] = meters.patches(x, fid_patch)
    reached: dict[str, float] = {}
    rows = []
    for e in entries:

        def fid_features(y: torch.Tensor, name: str = e.name) -> None:
            if want_fid:
                feats[name] = meters.patches(y, fid_patch)

        rows.append(_entry_row(e, iname, img, x, ref, meters, device, reached, fid_features,
                               save_to, metrics))
    return rows, feats


def _entry_row(e: Any, iname: str, img: Image.Image, x: torch.Tensor, ref: Any,
               meters: _Meters, device: str, reached: dict[str, float],
               on_decoded: Callable[[torch.Tensor], None], save_to: Path | None,
               metrics: Sequence[str]) -> dict[str, Any]:
    """One entry on one image: its CSV row. A failure sets ``error`` and the evaluation goes
    on with the other entries; ``reached`` (entry → bpp on this image) lets a matched entry
    aim at its reference's rate; ``on_decoded`` gets the decoded tensor (FID features)."""
    row: dict[str, Any] = {"image": iname, "entry": e.name, "family": family_of(e),
                           "width": img.width, "height": img.height}
    try:
        if getattr(e, "match", None) is not None:
            if e.match not in reached:
                raise RuntimeError(f"reference entry {e.match!r} failed on this image")
            e.target_bpp = reached[e.match]
        t0 = time.perf_counter()
        data = e.encode(img)
        t1 = time.perf_counter()
        rec = e.decode(data).convert("RGB")
        t2 = time.perf_counter()
        if rec.size != img.size:
            raise ValueError(f"decoded size {rec.size} != original {img.size}")
        row.update(bytes=len(data), bpp=8 * len(data) / (img.width * img.height),
                   enc_s=t1 - t0, dec_s=t2 - t1)
        reached[e.name] = row["bpp"]
        y = to_tensor(rec, device)
        row.update(meters.measure(x, ref, y))
        on_decoded(y)
        if save_to is not None:
            dest = save_to / safe_name(e.name) / f"{safe_name(iname)}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            rec.save(dest)
    except Exception as exc:  # noqa: BLE001 - record, keep evaluating the others
        log.warning("%s on %s failed: %s", e.name, iname, exc)
        row["error"] = f"{type(exc).__name__}: {exc}"
    if hasattr(e, "columns"):
        row.update(e.columns())
    log.info("%s %s: %s", iname, e.name, {k: row.get(k) for k in ("bpp", *metrics) if k in row})
    return row

def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@=+-]+", "_", name)


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else None


def _summarize(rows, entries, imgs, metrics, device, ref_feats, rec_feats, min_patches,
               patch, n_patches) -> dict[str, Any]:
    per_entry: dict[str, Any] = {}
    notes: list[str] = []
    need = max(min_patches, 2)
    for e in entries:
        ok = [r for r in rows if r["entry"] == e.name and "error" not in r]
        s: dict[str, Any] = {"family": family_of(e), "images": len(ok),
                             "errors": sum(1 for r in rows if r["entry"] == e.name) - len(ok)}
        for k in ("bpp", *[m for m in metrics if m != "fid"], "enc_s", "dec_s"):
            s[k] = _mean([r.get(k) for r in ok])
        if "fid" in metrics:
            got = rec_feats[e.name]
            have = sum(len(ref_feats[i]) for i in got) if ref_feats else n_patches
            if have < need:
                s["fid"], s["fid_note"] = None, (
                    f"not computed: {have} patches of {patch}x{patch} < {need} needed")
            else:
                a = np.concatenate([ref_feats[i] for i in sorted(got)])
                b = np.concatenate([got[i] for i in sorted(got)])
                s["fid"], s["fid_patches"] = frechet_distance(a, b), have
        per_entry[e.name] = s
    scales = sorted({r["ms_ssim_scales"] for r in rows if "ms_ssim_scales" in r})
    if scales and scales != [5]:
        notes.append(f"MS-SSIM used {scales} scales on some images (5 needs a short side > 160 px)")
    if "fid" in metrics and n_patches < need:
        notes.append(f"FID not computed: the images give {n_patches} patches of {patch}x{patch}, "
                     f"fewer than min_fid_patches={need}")
    elif "fid" in metrics and n_patches < 2048:
        notes.append(f"FID over {n_patches} patches (< 2048 feature dims): biased upwards, "
                     "compare only at equal patch counts")
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "metrics": list(metrics), "images": [n for n, _ in imgs],
        "fid_protocol": {"patch": patch, "shifted_grid": True, "patches": n_patches,
                         "min_patches": min_patches} if "fid" in metrics else None,
        "entries": per_entry, "notes": notes,
    }


__all__ = [
    "CSV_COLUMNS", "LABELS", "METRICS", "MIN_FID_PATCHES", "PLOTS", "TRADEOFF_PLOT",
    "CallableEntry", "ClassicalEntry", "Entry", "MatchedBppEntry", "add_bd_rates",
    "classical_entries", "family_of", "load_images", "matched_bpp_entries", "plot_summary",
    "plot_tradeoff", "run_evaluation", "safe_name", "summary_table", "to_tensor", "write_csv",
]
