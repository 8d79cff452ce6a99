"""Summarise the finished images of a stopped `cdc eval` (its OUT/.progress) as an evaluation
of those images: per_image.csv, summary.json (per-entry means; no FID: too few patches),
BD-rates — for when the CPU time runs out before every image is done. Says which images.

    python bench/eval_partial.py OUT [IMAGES_FOLDER_FOR_PANELS]
"""

from __future__ import annotations

import datetime
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

METRICS = ("psnr", "ms_ssim", "lpips_alex", "lpips_vgg", "dists")


def main(out: Path, originals: str | None) -> None:
    prog = out / ".progress"
    state = json.loads((prog / "state.json").read_text())
    rows, done = [], []
    for i, name in enumerate(state["images"]):
        f = prog / f"{i:04d}.json"
        if not f.is_file():
            break  # a prefix of the sorted images: shards leave holes after it
        rows += json.loads(f.read_text())
        done.append(name)
    from pipeline.evaluation.report import write_csv

    write_csv(rows, out / "per_image.csv")  # the columns `cdc eval` writes
    by = defaultdict(list)
    for r in rows:
        by[r["entry"]].append(r)
    entries = {}
    for name, rs in by.items():
        e = {"family": rs[0]["family"], "bpp": float(np.mean([r["bpp"] for r in rs])),
             "images": len(rs)}
        for m in METRICS:
            v = [r[m] for r in rs if r.get(m) is not None]
            e[m] = float(np.mean(v)) if v else None
        e["fid"] = None
        entries[name] = e
    summary = {"entries": entries, "images": done, "metrics": list(METRICS),
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec="seconds"),
               "device": "cpu", "partial": f"first {len(done)} of {len(state['images'])} "
               "images (the evaluation was stopped for CPU time)"}
    from pipeline.evaluation.bdrate import bd_rates

    summary["bd_rate"] = {"anchor": "AVIF", "families": bd_rates(
        summary, "AVIF", ["psnr", "dists", "lpips_alex", "lpips_vgg"])}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(done)} images: {', '.join(done)}")
    if originals:
        from pipeline.evaluation.panels import write_panels

        print(f"{len(write_panels(out, originals))} panels in {out}/panels")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
