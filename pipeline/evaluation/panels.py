"""Visual panels of an evaluation: original | AVIF | ours per tier, at the same bytes, 2×.

A metric that says better while the face says worse is a bug in how the metric is used:
these panels are what to look at before calling a model done. For each image and rate of
a rate-controlled codec's evaluation (``cdc eval --rates … --panels``), one PNG with a
crop of the original, of AVIF at the bytes of our stream, and of each tier of ours,
enlarged 2× with nearest-neighbour (no smoothing that would hide artefacts), each
labelled with bpp, PSNR and DISTS/LPIPS when measured.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from pipeline.evaluation.runner import safe_name as _safe

#: Crop centres (x, y) of faces and detail in the Kodak images the README shows; any other
#: image gets its centre. (Display only: nothing is chosen or tuned on these.)
CROP_CENTRES = {"kodim04": (290, 400), "kodim15": (560, 250), "kodim18": (300, 230),
                "kodim23": (170, 240), "kodim05": (384, 256), "kodim20": (300, 300)}
CROP = 192
SCALE = 2
LABEL_H = 44
_ENTRY = re.compile(r"^(?P<model>\S+) (?P<rate>[0-9.e-]+)bpp (?P<tier>\S+)$")


def _crop(img: Image.Image, stem: str) -> Image.Image:
    cx, cy = CROP_CENTRES.get(stem, (img.width // 2, img.height // 2))
    side = min(CROP, img.width, img.height)
    left = min(max(0, cx - side // 2), img.width - side)
    top = min(max(0, cy - side // 2), img.height - side)
    box = img.crop((left, top, left + side, top + side))
    return box.resize((side * SCALE, side * SCALE), Image.NEAREST)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at 15 px (its default 10 px left the spaces 2-3 px wide once a
    panel is shown scaled down: "refine-avifstandard", "DISTS0.163")."""
    try:
        return ImageFont.load_default(size=15)
    except (ImportError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _label(row: dict[str, str] | None, title: str) -> str:
    if row is None:
        return title
    parts = [title, f"{float(row['bpp']):.3f} bpp"]
    for key, fmt in (("psnr", "{:.2f} dB"), ("dists", "DISTS {:.3f}"),
                     ("lpips_alex", "LPIPS {:.3f}")):
        if row.get(key):
            parts.append(fmt.format(float(row[key])))
    return "  ".join(parts[:2]) + "\n" + "  ".join(parts[2:])


def write_panels(out: str | Path, images: str | Path | None = None) -> list[Path]:
    """Panels from ``out``'s per_image.csv and decoded/ folders and the originals in the
    folder ``images`` (files named like the CSV's images); returns the files written."""
    out = Path(out)
    with open(out / "per_image.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r.get("error")]
    by = {(r["image"], r["entry"]): r for r in rows}
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for r in rows:
        m = _ENTRY.match(r["entry"])
        if m and "@" not in m["model"]:  # ours, not a classical codec matched to ours
            groups[(r["image"], m["model"], m["rate"])].append(r["entry"])
    written = []
    for (image, model, rate), ours in sorted(groups.items()):
        stem = Path(image).stem
        src = _original(out, image, images)
        if src is None:
            continue
        avif = next((e for (i, e) in by if i == image and e.startswith("avif@")
                     and e.split("@", 1)[1] in ours), None)
        cols = [("original", src, None)]
        if avif:
            cols.append(("AVIF", Image.open(out / "decoded" / _safe(avif) / f"{_safe(image)}.png"),
                         by[(image, avif)]))
        for e in ours:
            path = out / "decoded" / _safe(e) / f"{_safe(image)}.png"
            if path.exists():
                cols.append((f"{model} {e.rsplit(' ', 1)[1]}", Image.open(path), by[(image, e)]))
        tiles = [_crop(im.convert("RGB"), stem) for _, im, _ in cols]
        w, h = tiles[0].size
        panel = Image.new("RGB", (w * len(tiles), h + LABEL_H), "white")
        draw = ImageDraw.Draw(panel)
        for k, ((title, _, row), tile) in enumerate(zip(cols, tiles)):
            panel.paste(tile, (k * w, LABEL_H))
            draw.multiline_text((k * w + 6, 4), _label(row, title), fill="black", spacing=4,
                                font=_font())
        dest = out / "panels" / f"{_safe(stem)}-{rate}bpp.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        panel.save(dest)
        written.append(dest)
    return written


def _original(out: Path, image: str, images: str | Path | None) -> Image.Image | None:
    folder = Path(images) if images else None
    if folder is None or not folder.is_dir():
        return None
    for cand in sorted(folder.glob(f"{image}.*")):
        return Image.open(cand).convert("RGB")
    return None
