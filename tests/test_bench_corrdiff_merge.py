"""bench/bench_corrdiff.py --merge: split runs join into one paired report."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_corrdiff  # noqa: E402

FIELDS = ["image", "entry", "family", "width", "height", "bytes", "bpp", "psnr", "lpips_alex",
          "dists", "enc_s", "dec_s"]


def _run(folder: Path, images: dict[str, tuple[float, float]], weights: list[float]) -> Path:
    """A finished split run: per image (CDC PSNR, CorrDiff PSNR); LPIPS follows PSNR."""
    folder.mkdir()
    with (folder / "per_image.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for img, (p_cdc, p_corr) in images.items():
            for entry, fam, p in (("CDC s1 g0", "CDC", p_cdc),
                                  ("CorrDiff s1 g0 steps0-0 by pixels", "CorrDiff", p_corr)):
                w.writerow({"image": img, "entry": entry, "family": fam, "width": 8,
                            "height": 8, "bytes": 10, "bpp": 1.25, "psnr": p,
                            "lpips_alex": 1 / p, "dists": 0.2, "enc_s": 0, "dec_s": 0})
    (folder / "paired.json").write_text(json.dumps(
        {"pairs": [], "weights": {"CorrDiff s1 g0 steps0-0 by pixels": weights},
         "table": [0.0, 0.5, 1.0]}))
    return folder


def test_merge_counts_every_image_once_and_keeps_the_weights(tmp_path: Path):
    a = _run(tmp_path / "a", {"k1": (18.0, 19.0), "k2": (20.0, 19.5)}, [0.5, 1.0])
    b = _run(tmp_path / "b", {"k2": (1.0, 1.0), "k3": (17.0, 18.0)}, [1.0])  # k2 again: ignored
    text = bench_corrdiff.merge([a, b], tmp_path / "out", ["psnr", "lpips_alex", "dists"], None)
    got = json.loads((tmp_path / "out" / "paired.json").read_text())
    (pair,) = got["pairs"]
    assert pair["images"] == 3
    assert (pair["psnr"]["better"], pair["psnr"]["worse"]) == (2, 1)
    assert (pair["lpips_alex"]["better"], pair["lpips_alex"]["worse"]) == (2, 1)
    assert pair["dists"]["equal"] == 3
    assert got["weights"]["CorrDiff s1 g0 steps0-0 by pixels"] == [0.5, 1.0, 1.0]
    assert "| 0 | 1 | 2 |" in text  # the histogram over the model's table 0, 0.5, 1
    assert "means over 3 images" in text
    assert (tmp_path / "out" / "pd_lpips_alex.png").stat().st_size > 0
