"""How much of the latent refiner's change is the 8-pixel grid, with and without the filter.

On the validation split (never Kodak), for each photo and rate: the base layer the codec
codes, the refiner's output along the standard path, and its refinement d = refined − base.
Prints, per row, the share of d's energy in its 8-periodic part (``cdc.refine.degrid``'s
local estimate) before and after the filter, and PSNR / LPIPS-VGG of the standard blend
both ways; writes 2× crops (original | base | refined as trained | refined, grid removed)
to --out for looking at.

    python bench/refine_grid.py runs/refine-latent --images 6 --rates 0.06,0.12 \
        --out docs/results/refine-validation/grid
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from refine_operating_points import load_codec_from, validation_args, validation_photo
from torch import Tensor


def crop_panel(images: list[Tensor], box: tuple[int, int, int]) -> Image.Image:
    y, x, s = box
    tiles = []
    for t in images:
        arr = ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        tiles.append(Image.fromarray(arr).crop((x, y, x + s, y + s)).resize((2 * s, 2 * s),
                                                                          Image.NEAREST))
    out = Image.new("RGB", (len(tiles) * (2 * s + 8) - 8, 2 * s), "white")
    for i, t in enumerate(tiles):
        out.paste(t, (i * (2 * s + 8), 0))
    return out


def psnr_and_lpips(lp, y: Tensor, x: Tensor) -> tuple[float, float]:
    """PSNR (dB) and LPIPS of a [-1, 1] decode against the original, the decode rounded to
    the 8-bit image a user gets."""
    y = ((y.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    with torch.no_grad():
        d = float(lp((y + 1) / 2, (x + 1) / 2))
    return 10 * math.log10(4 / max(float(((y - x) ** 2).mean()), 1e-12)), d


def validation_targets(a: argparse.Namespace, codec) -> Iterator[tuple[str, float, np.ndarray,
                                                                         Tensor, int]]:
    """(photo, rate, pixels, original, base-layer byte budget) for the chosen photos of the
    validation split at each of ``a.rates`` (the stream's total rate, as ``codec`` counts)."""
    from cdc.image import array_to_tensor
    from pipeline.training.refine_pairs import read_split

    for name in sorted(read_split(a.split))[a.first: a.first + a.images]:
        arr = np.asarray(validation_photo(a.root, name))
        h, w = arr.shape[:2]
        x = array_to_tensor(arr)
        for rate in (float(r) for r in a.rates.split(",")):
            yield name, rate, arr, x, max(1, int(rate * h * w / 8) - codec._overhead(h, w))


def validation_bases(a: argparse.Namespace, codec) -> Iterator[tuple[str, float, Tensor,
                                                                       Tensor]]:
    """(photo, rate, original, base decode) for the chosen photos of the validation split at
    each of ``a.rates``: the base layer as ``codec`` codes it at that total rate."""
    from cdc.refine import base_layer

    for name, rate, arr, x, target in validation_targets(a, codec):
        h, w = arr.shape[:2]
        yield name, rate, x, base_layer.decode_choice(
            base_layer.search(arr, target, codec.config), h, w)


def out_folder(path: str) -> Path | None:
    """The bench's ``--out`` folder, made; None when not asked for."""
    if not path:
        return None
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def load_latent_codec(model: str, why: str):
    """(codec, training step) of a latent-space refine model; any other exits with ``why``."""
    codec, step = load_codec_from(model)
    if getattr(codec, "space", None) is None:
        raise SystemExit(f"{model}: not a latent-space refine model, so it has {why}")
    return codec, step


def print_row(row: dict) -> None:
    """One bench row on one line, floats to 4 places."""
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)


def column_means(rows: list[dict]) -> dict[str, float]:
    """The mean of every numeric column of ``rows`` (not the photo's name or the rate)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]
            if k not in ("image", "rate") and isinstance(rows[0][k], (int, float))}


def bound_arg(ap: argparse.ArgumentParser) -> None:
    """``--bound``: the standard tier's bound to measure at (default: the model's own)."""
    ap.add_argument("--bound", type=float, default=None,
                    help="the standard tier's bound (dB; default: the model's)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name")
    validation_args(ap, 6)
    ap.add_argument("--rates", default="0.06,0.12")
    ap.add_argument("--window", type=int, default=8, help="the filter's window (cells)")
    bound_arg(ap)
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    from cdc.refine import blend
    from cdc.refine.degrid import periodic_part, remove_grid
    from pipeline.metrics.lpips import LPIPS

    codec, step = load_codec_from(a.model)
    cfg = codec.config
    if cfg.space != "taef2":
        raise SystemExit(f"{a.model}: not a latent-space refiner (no latent grid)")
    codec.net.cfg = dataclasses.replace(cfg, degrid_window=0)  # the refiner as trained
    bound = cfg.bound_db if a.bound is None else a.bound
    # The bound decides most of a PSNR comparison: a run folder's config has the model
    # config's bound (0.3 dB), a shipped model the one chosen for it (refine-avif: 0.4), so
    # compare models at one --bound (2026-12-06: a 0.3-vs-0.4 comparison passed for +0.09 dB).
    whose = "--bound" if a.bound is not None else "the model config's"
    print(f"# {a.model} step {step}: standard path, bound {bound:g} dB ({whose})", flush=True)
    lp = LPIPS("vgg")
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    def share(d: torch.Tensor) -> float:
        return float((periodic_part(d, 8, a.window) ** 2).sum() / (d ** 2).sum().clamp_min(1e-12))

    measure = functools.partial(psnr_and_lpips, lp)

    rows = []
    for name, rate, x, base in validation_bases(a, codec):
        h, w = x.shape[-2:]
        raw = codec.refine(base, 1, 0.0, 0)
        filt = remove_grid(raw, base, 8, a.window).clamp(-1, 1)
        row = {"image": name, "rate": rate, "grid_share_raw": share(raw - base),
               "grid_share_filtered": share(filt - base)}
        for tag, ref in (("raw", raw), ("filtered", filt)):
            _, y = blend.bounded(x, base, ref, cfg.table, cfg.tile, bound)
            row[f"{tag}_psnr"], row[f"{tag}_lpips_vgg"] = measure(y, x)
        rows.append(row)
        print_row(row)
        if out:
            s = min(160, h, w)
            box = ((h - s) // 2, (w - s) // 2, s)
            crop_panel([x[0], base[0], raw[0], filt[0]], box).save(
                out / f"{Path(name).stem}_{rate:g}.png")
    summary = {"model": a.model, "train_steps": step, "window": a.window, "bound_db": bound,
               "rows": rows}
    for key in ("grid_share_raw", "grid_share_filtered", "raw_psnr", "filtered_psnr",
                "raw_lpips_vgg", "filtered_lpips_vgg"):
        summary[f"mean_{key}"] = float(np.mean([r[key] for r in rows]))
    print({k: round(v, 4) for k, v in summary.items() if k.startswith("mean_")})
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
