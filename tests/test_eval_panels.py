"""Visual panels (`cdc eval --panels`): original | AVIF | ours per tier, cropped, 2×, labelled."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.evaluation.panels import CROP, LABEL_H, SCALE, write_panels
from pipeline.evaluation.runner import safe_name

COLOURS = {"avif@refine-x 0.1bpp standard": (200, 30, 30),
           "refine-x 0.1bpp preview": (30, 200, 30),
           "refine-x 0.1bpp standard": (30, 30, 200)}


def _evaluation(tmp_path: Path) -> tuple[Path, Path]:
    """A fake evaluation folder: per_image.csv and one flat-coloured decode per entry."""
    out, originals = tmp_path / "eval", tmp_path / "images"
    originals.mkdir()
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(originals / "photo.png")
    fields = ["image", "entry", "bpp", "psnr", "dists", "lpips_alex", "error"]
    rows = [{"image": "photo", "entry": e, "bpp": "0.1", "psnr": "30.5", "dists": "0.15",
             "lpips_alex": "0.2", "error": ""} for e in COLOURS]
    out.mkdir()
    with open(out / "per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    for entry, rgb in COLOURS.items():
        d = out / "decoded" / safe_name(entry)
        d.mkdir(parents=True)
        Image.fromarray(np.full((300, 400, 3), rgb, np.uint8)).save(d / "photo.png")
    return out, originals


def test_panel_columns_hold_each_decode_at_2x_with_labels(tmp_path):
    out, originals = _evaluation(tmp_path)
    [panel] = write_panels(out, originals)
    assert panel.name == "photo-0.1bpp.png"
    im = np.asarray(Image.open(panel).convert("RGB"))
    side = CROP * SCALE
    assert im.shape == (side + LABEL_H, 4 * side, 3)  # original, AVIF, preview, standard
    expect = [(128, 128, 128), COLOURS["avif@refine-x 0.1bpp standard"],
              COLOURS["refine-x 0.1bpp preview"], COLOURS["refine-x 0.1bpp standard"]]
    for k, rgb in enumerate(expect):  # each column is its own decode, not a neighbour's
        tile = im[LABEL_H:, k * side:(k + 1) * side]
        assert (tile == rgb).all(), k
        label = im[:LABEL_H, k * side:(k + 1) * side]
        assert (label.min(axis=2) < 100).sum() > 50, f"column {k} has no label"


def test_no_original_folder_writes_no_panel(tmp_path):
    out, _ = _evaluation(tmp_path)
    assert write_panels(out, tmp_path / "missing") == []
