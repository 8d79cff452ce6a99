"""What an archive keeps of a folder's capture metadata (pipeline/photo_metadata.py): how
many photos carry any, which tags, with GPS, and the bytes it costs beside the bitstream
(canonical JSON) against the EXIF block the file had — the README's figures for
``data/train``.

    python bench/capture_metadata.py /work/shared/data/train
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.photo_metadata import dumps, read_metadata


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    a = ap.parse_args()
    photos, tags = 0, collections.Counter()
    kept: list[int] = []
    raw: list[int] = []
    for path in sorted(p for p in Path(a.root).rglob("*") if p.is_file()):
        try:
            img = Image.open(path)
        except OSError:
            continue
        photos += 1
        meta = read_metadata(img)
        if meta:
            kept.append(len(dumps(meta).encode()))
            raw.append(len(img.info.get("exif", b"")))
            tags.update(list(meta))
    print(f"{photos} photos, {len(kept)} with capture metadata kept "
          f"({tags['GPSLatitude']} with a GPS position, {tags['DateTimeOriginal']} with "
          "DateTimeOriginal)")
    if kept:
        k, r = np.array(kept), np.array(raw)
        print(f"kept JSON bytes: median {np.median(k):.0f}, 10-90 % {np.percentile(k, 10):.0f}-"
              f"{np.percentile(k, 90):.0f}, max {k.max()}; the files' EXIF blocks: median "
              f"{np.median(r):.0f}, max {r.max()}")
    for name, n in tags.most_common():
        print(f"  {name:24s} {n}")


if __name__ == "__main__":
    main()
