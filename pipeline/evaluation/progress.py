"""An evaluation's progress folder (``OUT/.progress``): what lets a stopped ``cdc eval`` go
on from its finished images, and ``--shard K/N`` runs share one evaluation.

Each finished image's rows and FID features are written atomically as soon as it is done;
the folder is keyed by what is evaluated (entries, metrics, FID protocol, images), so a
run with other settings starts over instead of mixing results.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.evaluation.report import jsonable
from pipeline.files import write_bytes_atomic

log = logging.getLogger(__name__)


class Progress:
    """Finished images of an evaluation on disk: ``state.json`` (what is being evaluated),
    ``NNNN.json`` (an image's rows) and ``NNNN.npz`` (its FID features), each written
    atomically after the image, so a stopped run loses at most the image in flight."""

    def __init__(self, folder: Path, state: dict[str, Any], resume: bool):
        self.folder = folder
        state_file = folder / "state.json"
        same = False
        if resume and state_file.is_file():
            try:
                same = json.loads(state_file.read_text()) == json.loads(json.dumps(state))
            except (OSError, ValueError):
                same = False
        if not same:
            self.clear()
        folder.mkdir(parents=True, exist_ok=True)
        if not same:
            write_bytes_atomic(state_file, json.dumps(state).encode())

    def load(self, i: int) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]] | None:
        """Image ``i``'s (rows, FID features) if it was finished, else None."""
        rows_file, feats_file = self.folder / f"{i:04d}.json", self.folder / f"{i:04d}.npz"
        if not rows_file.is_file() or not feats_file.is_file():
            return None
        try:
            rows = json.loads(rows_file.read_text())
            with np.load(feats_file, allow_pickle=False) as z:
                feats = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable progress for image %d (%s); evaluating it again",
                        self.folder, i, e)
            return None
        return rows, feats

    def save(self, i: int, rows: list[dict[str, Any]], feats: dict[str, np.ndarray]) -> None:
        """Keep image ``i`` as finished (features first: the rows file marks it done)."""
        buf = io.BytesIO()
        np.savez(buf, **feats)
        write_bytes_atomic(self.folder / f"{i:04d}.npz", buf.getvalue())
        write_bytes_atomic(self.folder / f"{i:04d}.json", json.dumps(jsonable(rows)).encode())

    def clear(self) -> None:
        """Delete the folder (a fresh start, or the evaluation is done)."""
        if self.folder.is_dir():
            for f in self.folder.iterdir():
                f.unlink(missing_ok=True)
            self.folder.rmdir()


def open_progress(out: Path, entries: Sequence[Any], metrics: list[str], want_fid: bool,
                  fid_patch: int, imgs: list[tuple[str, Image.Image]], resume: bool
                  ) -> Progress:
    """The progress folder of this evaluation (what it evaluates is its key); says when a
    stopped run's images are kept."""
    progress = Progress(out / ".progress", {
        "entries": [e.name for e in entries], "metrics": metrics, "fid": want_fid,
        "fid_patch": fid_patch, "images": [n for n, _ in imgs],
        "sizes": [list(im.size) for _, im in imgs]}, resume)
    kept = sum((progress.folder / f"{i:04d}.json").is_file() for i in range(len(imgs)))
    if kept:
        log.warning("%s: going on from a stopped evaluation (%d of %d images kept; "
                    "fresh start: resume=False / --fresh)", out, kept, len(imgs))
    return progress
