"""Merge ``cdc eval`` folders: re-measure some models, keep the others' figures.

A ladder evaluation on 24 full-size images with five classical codecs costs the better part
of an hour on two cores. When one rung is retrained only its entries (and the classical
entries matched to its new rate) need measuring again; this joins the new folder with the
old one — same images, metrics and FID protocol, or it refuses — so BD-rates and plots are
computed over every rung again without decoding the unchanged ones twice. An entry of a
later folder replaces the one of the same name in an earlier folder; the merged summary
names where each entry came from.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.evaluation.report import jsonable, plot_summary, write_csv
from pipeline.files import write_bytes_atomic

SAME = ("images", "metrics", "fid_protocol")  # what every merged folder must share


class MergeError(ValueError):
    """A folder that is not a finished evaluation, or one of another evaluation."""


def _read(folder: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    path = folder / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise MergeError(f"{path}: no summary.json (not a finished `cdc eval` folder)") from None
    except (OSError, ValueError) as e:
        raise MergeError(f"{path}: unreadable summary ({e})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("entries"), dict) or any(
            k not in summary for k in SAME):
        raise MergeError(f"{path}: not a `cdc eval` summary (needs entries, {', '.join(SAME)})")
    csv_path = folder / str((summary.get("files") or {}).get("csv", "per_image.csv"))
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise MergeError(f"{csv_path}: unreadable per-image CSV ({e})") from None
    return summary, rows


def merge_evaluations(sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                      plots: bool = True) -> dict[str, Any]:
    """Join finished evaluation folders into ``out_dir`` (which may be one of them): its
    ``per_image.csv``, ``summary.json`` (with ``merged_from``) and plots. Raises
    :class:`MergeError` before writing anything if the folders do not share images,
    metrics and FID protocol."""
    if len(sources) < 2:
        raise MergeError("merge needs at least two evaluation folders")
    read = [(Path(d), *_read(Path(d))) for d in sources]
    first_dir, first, _ = read[0]
    for d, s, _ in read[1:]:
        for key in SAME:
            if s[key] != first[key]:
                raise MergeError(f"{d}: its {key} differ from {first_dir}'s; only evaluations "
                                 "of the same images, metrics and FID protocol merge")
    entries: dict[str, Any] = {}
    rows_of: dict[str, list[dict[str, str]]] = {}
    origin: dict[str, str] = {}
    for d, s, rows in read:
        for name, e in s["entries"].items():
            entries[name] = e  # a later folder replaces; the entry keeps its first place
            rows_of[name] = [r for r in rows if r.get("entry") == name]
            origin[name] = str(d)
    images = list(first["images"])
    rank = {n: i for i, n in enumerate(images)}
    rows = sorted((r for name in entries for r in rows_of[name]),
                  key=lambda r: rank.get(r.get("image", ""), len(rank)))  # stable: entry order kept
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": read[-1][1].get("device"),
        **{k: first[k] for k in SAME},
        "entries": entries,
        "notes": list(dict.fromkeys(n for _, s, _ in read for n in s.get("notes", []))),
        "merged_from": [{"folder": str(d), "created": s.get("created"),
                         "entries": [n for n in s["entries"] if origin[n] == str(d)]}
                        for d, s, _ in read],
    }
    write_csv([{k: v for k, v in r.items() if v not in ("", None)} for r in rows],
              out / "per_image.csv")
    summary["files"] = {"csv": "per_image.csv",
                        "plots": plot_summary(summary, out) if plots else []}
    write_bytes_atomic(out / "summary.json", json.dumps(jsonable(summary), indent=2).encode())
    return summary
