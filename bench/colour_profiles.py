"""What the colour-profile conversion (cdc/colour.py) does to a folder of photos: how many
carry which profile, and how far the converted pixels are from the raw ones (mean |Δ| in
8-bit levels) — the README's figures for ``data/train``.

    python bench/colour_profiles.py /work/shared/data/train
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
from PIL import Image

from cdc.colour import to_srgb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    a = ap.parse_args()
    counts: collections.Counter = collections.Counter()
    moved: dict[str, list[float]] = collections.defaultdict(list)
    for path in sorted(p for p in Path(a.root).rglob("*") if p.is_file()):
        try:
            img = Image.open(path)
            img.load()
        except OSError:
            continue
        if not img.info.get("icc_profile"):
            counts["(no profile)"] += 1
            continue
        out, note = to_srgb(img)
        counts[note or "(sRGB: unchanged)"] += 1
        if out is not img:
            d = np.abs(np.asarray(out.convert("RGB"), np.int16)
                       - np.asarray(img.convert("RGB"), np.int16))
            moved[note].append(float(d.mean()))
    for note, n in counts.most_common():
        extra = f", mean |Δ| {np.mean(moved[note]):.1f} levels" if moved[note] else ""
        print(f"{n:5d}  {note}{extra}")
    print(f"converted: {sum(len(v) for v in moved.values())}")


if __name__ == "__main__":
    main()
