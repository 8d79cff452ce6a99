"""Which archived photos changed at their source: by modification time, within 2 s."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.archive.planning import InputItem
from pipeline.archive.source_changes import changed_sources
from storage import Archive, Record


def test_changed_by_time_beyond_the_window(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    names = ["same.jpg", "fat.jpg", "edited.jpg", "untimed.jpg", "gone.jpg"]
    for n in names:
        (src / n).write_bytes(b"x")
        os.utime(src / n, (1_600_000_000, 1_600_000_000))
    os.utime(src / "fat.jpg", (1_600_000_001.9, 1_600_000_001.9))  # FAT's 2-second steps
    os.utime(src / "edited.jpg", (1_600_000_300, 1_600_000_300))
    stored = {"FileModified": "2020-09-13T12:26:40Z"}  # 1_600_000_000
    arch = Archive.create(str(tmp_path / "a.zarr"), codec_id="toy", model_id="m",
                          weights_digest="sha256:00")
    arch.write_shard(0, [Record(n, b"x", 1, 1, meta={} if n == "untimed.jpg" else stored)
                         for n in sorted(names)])
    (src / "gone.jpg").unlink()  # no file to compare: not judged
    items = [InputItem(n, str(src / n)) for n in names]
    assert changed_sources(arch, items, set(names)) == ["edited.jpg"]
    assert changed_sources(arch, items, {"same.jpg"}) == []  # only archived keys are judged


def test_a_new_time_on_the_same_bytes_is_not_an_edit(tmp_path: Path):
    """With the source's digest stored, a source whose time moved (a copy that lost it, a
    DST shift on a memory card) but whose bytes did not is not changed; one whose bytes
    differ is; a record without a digest is judged by its time alone."""
    from pipeline.photo_metadata import source_digest

    src = tmp_path / "src"
    src.mkdir()
    stored = {"FileModified": "2020-09-13T12:26:40Z"}  # 1_600_000_000
    recs = []
    for n in ("touched.jpg", "edited.jpg", "old-record.jpg"):
        (src / n).write_bytes(b"photo " + n.encode())
        digest = {} if n == "old-record.jpg" else source_digest((src / n).read_bytes())
        recs.append(Record(n, b"x", 1, 1, meta={**stored, **digest}))
        os.utime(src / n, (1_600_003_600, 1_600_003_600))  # an hour later, every one
    (src / "edited.jpg").write_bytes(b"photo, retouched")
    os.utime(src / "edited.jpg", (1_600_003_600, 1_600_003_600))
    arch = Archive.create(str(tmp_path / "a.zarr"), codec_id="toy", model_id="m",
                          weights_digest="sha256:00")
    arch.write_shard(0, recs)
    items = [InputItem(r.key, str(src / r.key)) for r in recs]
    assert changed_sources(arch, items, {r.key for r in recs}) == ["edited.jpg",
                                                                   "old-record.jpg"]
