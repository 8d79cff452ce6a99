"""`cdc ls`: an archive's keys, failures, sizes and capture dates, read without payloads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from storage import Archive, Record

TAKEN = {"DateTimeOriginal": "2021:07:04 18:22:10", "OffsetTimeOriginal": "+02:00",
         "GPSLatitude": [[48, 1], [51, 1], [2, 1]], "GPSLatitudeRef": "N"}


def _archive(tmp_path: Path) -> str:
    arch = Archive.create(str(tmp_path / "a.zarr"), codec_id="toy", model_id="m",
                          weights_digest="sha256:00")
    arch.set_tiers({"standard": {"steps": 1}, "preview": {"steps": 0}})
    arch.write_shard(0, [Record("trip/b.jpg", b"x" * 300, 40, 60, meta=TAKEN),
                         Record.failed("scans/bad.png", "scans/bad.png: not an image\x1b[31m\nX")])
    arch.write_shard(1, [Record("trip/a b.jpg", b"y" * 100, 20, 20),
                         Record("Home/c.png", b"z" * 50, 10, 10)])
    return arch.url


def _ls(*args: str):
    return CliRunner().invoke(app, ["ls", *args])


def test_keys_sorted_one_per_line(tmp_path: Path):
    url = _archive(tmp_path)
    r = _ls(url)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == ["Home/c.png", "scans/bad.png", "trip/a b.jpg", "trip/b.jpg"]
    assert _ls(url, "--prefix", "trip/").output.splitlines() == ["trip/a b.jpg", "trip/b.jpg"]
    assert _ls(url, "--match", "HOME").output.splitlines() == ["Home/c.png"]
    assert _ls(url, "--prefix", "none/").output == ""


def test_failed_lists_the_reason_escaped(tmp_path: Path):
    r = _ls(_archive(tmp_path), "--failed")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines == ["scans/bad.png  (scans/bad.png: not an image\\x1b[31m\\nX)"]
    assert "\x1b" not in r.output


def test_long_rows_and_total(tmp_path: Path):
    r = _ls(_archive(tmp_path), "-l")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    b = next(ln for ln in lines if ln.endswith("trip/b.jpg"))
    # 300 bytes over 40x60 pixels: 1.0 bpp; the capture date with its offset, no position
    assert b.split()[:5] == ["ok", "60x40", "300", "1.000", "2021-07-04T18:22:10+02:00"]
    ab = next(ln for ln in lines if ln.endswith("trip/a b.jpg"))
    assert ab.split()[:5] == ["ok", "20x20", "100", "2.000", "-"]
    i = lines.index(next(ln for ln in lines if ln.endswith("scans/bad.png")))
    assert lines[i].split()[0] == "failed" and "not an image" in lines[i + 1]
    # 450 bytes over 2,900 pixels of the ok images
    assert lines[-1] == "4 images (1 failed), 450 bytes, 1.241 bpp"
    assert "48" not in r.output  # the GPS position is never listed


def test_json_has_header_totals_and_items(tmp_path: Path):
    url = _archive(tmp_path)
    r = _ls(url, "--json", "--prefix", "trip/")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert (d["codec"], d["model"], d["tiers"]) == ("toy", "m", ["preview", "standard"])
    assert (d["images"], d["failed"], d["bytes"]) == (2, 0, 400)
    assert d["bpp"] == round(8 * 400 / (2400 + 400), 4)
    assert [it["key"] for it in d["items"]] == ["trip/a b.jpg", "trip/b.jpg"]
    assert d["items"][1]["taken"] == "2021-07-04T18:22:10+02:00"
    assert "taken" not in d["items"][0] and "GPSLatitude" not in r.output


def test_missing_archive_is_one_line_error(tmp_path: Path):
    r = _ls(str(tmp_path / "nope.zarr"))
    assert r.exit_code == 1
    assert r.output.count("\n") == 1 and r.output.startswith("error: ")
    assert "nope.zarr" in r.output and "Traceback" not in r.output


def test_damaged_metadata_still_lists(tmp_path: Path):
    url = _archive(tmp_path)
    (tmp_path / "a.zarr" / "meta" / "00000000.json").write_text('{"shard": 0, "records": {}}')
    r = _ls(url, "-l")
    assert r.exit_code == 0, r.output
    assert next(ln for ln in r.output.splitlines() if ln.endswith("trip/b.jpg")).split()[4] == "-"


def test_ls_imports_neither_torch_nor_ray(tmp_path: Path):
    url = _archive(tmp_path)
    code = ("import sys; from jobs.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, ['ls', '-l', {url!r}]); assert r.exit_code == 0; "
            "print(sorted(m for m in ('torch', 'ray', 'compressai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_info_on_an_archive(tmp_path: Path):
    url = _archive(tmp_path)
    r = CliRunner().invoke(app, ["info", url])
    assert r.exit_code == 0, r.output
    rows = dict(ln.strip().split(": ", 1) for ln in r.output.splitlines())
    assert rows["codec"] == "toy" and rows["model"].startswith("m (sha256:00")
    assert rows["tiers"] == "preview steps 0; standard steps 1"
    assert rows["images"] == "4 (1 failed)" and rows["bytes"] == "450 of bitstreams"
    assert rows["shards"] == "2 completed (shard size 256)"
    d = json.loads(CliRunner().invoke(app, ["info", url, "--json"]).output)
    assert (d["records"], d["failed"], d["bytes"], d["shards"]) == (4, 1, 450, 2)
    assert d["tier_settings"]["standard"] == {"steps": 1}
    assert d["interrupted_removals"] == 0
    r = CliRunner().invoke(app, ["info", str(tmp_path)])  # a folder that is no archive
    assert r.exit_code == 1 and r.output.startswith("error: ") and r.output.count("\n") == 1


def _dated(tmp_path: Path) -> str:
    arch = Archive.create(str(tmp_path / "d.zarr"), codec_id="toy", model_id="m",
                          weights_digest="sha256:00")
    when = {"new.jpg": "2021:08:01 09:00:00", "old.jpg": "2020:12:31 23:59:59",
            "mid.jpg": "2021:07:04 18:22:10"}
    arch.write_shard(0, [Record(k, b"x" * (10 * (i + 1)), 4, 4,
                                meta={"DateTimeOriginal": v})
                         for i, (k, v) in enumerate(sorted(when.items()))]
                     + [Record("undated.png", b"x" * 99, 4, 4)])
    return arch.url


def test_taken_filters_and_sorting(tmp_path: Path):
    url = _dated(tmp_path)
    assert _ls(url, "--taken-from", "2021").output.splitlines() == ["mid.jpg", "new.jpg"]
    assert _ls(url, "--taken-to", "2021-07").output.splitlines() == ["mid.jpg", "old.jpg"]
    assert _ls(url, "--taken-from", "2021-07-04", "--taken-to", "2021-07-04"
               ).output.splitlines() == ["mid.jpg"]
    assert _ls(url, "--sort", "taken").output.splitlines() == [
        "old.jpg", "mid.jpg", "new.jpg", "undated.png"]
    assert _ls(url, "--sort", "bytes").output.splitlines() == [
        "undated.png", "old.jpg", "new.jpg", "mid.jpg"]
    for args in (["--taken-from", "2021-13"], ["--taken-to", "July"], ["--sort", "size"]):
        r = _ls(url, *args)
        assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1


def _edit_attrs(tmp_path: Path, **changes) -> None:
    path = tmp_path / "a.zarr" / "zarr.json"
    doc = json.loads(path.read_text())
    doc.pop("consolidated_metadata", None)
    doc["attributes"]["cdc_archive"].update(changes)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("changes,what", [
    ({"created": [1, 2]}, "'created'"), ({"tiers": {"standard": [1]}}, "'tiers'"),
    ({"tiers": "abc"}, "'tiers'"), ({"tiers": {"../x": {}}}, "'tiers'"),
    ({"model": "x"}, "'model'"), ({"model": {}}, "'model'"), ({"codec": [1]}, "'codec'"),
])
def test_malformed_attributes_are_one_line_errors(tmp_path: Path, changes, what: str):
    """Attributes of another shape than this package writes: refused at open, for every
    command, in one line (they gave tracebacks in `cdc get` before 2026-12-07)."""
    url = _archive(tmp_path)
    _edit_attrs(tmp_path, **changes)
    for args in (["info", url], ["ls", "--json", url], ["verify", url],
                 ["get", url, "trip/b.jpg", str(tmp_path / "o.png")]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 1, (args, r.output)
        assert r.output == f"error: {url}: attribute {what} is malformed\n", (args, r.output)


def test_info_and_ls_escape_archive_text(tmp_path: Path):
    url = _archive(tmp_path)
    arch = Archive.open(url)
    _edit_attrs(tmp_path, model={**arch.attrs["model"], "id": "m\x1b[31m"},
                tiers={"x": {"steps": "\x1b[2J"}})
    for args in (["info", url], ["info", "--json", url], ["ls", "--json", url], ["ls", "-l", url]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, (args, r.output)
        assert "\x1b" not in r.output and "Traceback" not in r.output
    rows = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in CliRunner().invoke(
        app, ["info", url]).output.splitlines())}
    assert rows["model"].startswith("m\\x1b[31m") and rows["tiers"] == "x steps \\x1b[2J"


def test_du_totals_per_folder(tmp_path: Path):
    url = _archive(tmp_path)  # trip/ 400 bytes (2 ok), scans/ 1 failed, Home/ 50 bytes
    lines = _ls(url, "--du", "1").output.splitlines()
    assert [ln.split() for ln in lines] == [
        ["400", "2", "0", "1.143", "trip"], ["50", "1", "0", "4.000", "Home"],
        ["0", "1", "1", "-", "scans"], ["450", "4", "1", "1.241", "(total)"]]
    d = json.loads(_ls(url, "--du", "1", "--json", "--prefix", "trip/").output)
    assert d["folders"] == [{"folder": "trip", "images": 2, "failed": 0, "bytes": 400,
                             "bpp": round(8 * 400 / 2800, 4)}]
    assert _ls(url, "--du", "0").exit_code == 2


def test_duplicates_by_source_digest(tmp_path: Path):
    """--duplicates: records whose sources had the same bytes. The default output is the
    redundant copies (a key list for `cdc rm --keys`), -l the groups, --json both; a record
    without a digest (archived before 2026-12-08) or failed is not compared."""
    same, other = {"SourceSHA256": "ab" * 16}, {"SourceSHA256": "cd" * 16}
    arch = Archive.create(str(tmp_path / "d.zarr"), codec_id="toy", model_id="m",
                          weights_digest="sha256:00")
    arch.write_shard(0, [Record("2021/beach.jpg", b"x" * 300, 40, 60, meta={**TAKEN, **same}),
                         Record("backup/beach.jpg", b"x" * 310, 40, 60, meta=same),
                         Record("old/beach.jpg", b"x" * 300, 40, 60),
                         Record.failed("bad/beach.jpg", "not an image")])
    arch.write_shard(1, [Record("export/beach copy.jpg", b"x" * 305, 40, 60, meta=same),
                         Record("2021/dog.jpg", b"y" * 90, 20, 20, meta=other),
                         Record("Phone/dog.jpg", b"y" * 80, 20, 20, meta=other),
                         Record("2021/cat.jpg", b"z" * 50, 10, 10,
                                meta={"SourceSHA256": "ef" * 16})])
    r = _ls(arch.url, "--duplicates")
    assert r.exit_code == 0, r.output
    # kept: the first key of each group; listed: the others, the group of most bytes first
    assert r.output.splitlines() == ["backup/beach.jpg", "export/beach copy.jpg",
                                     "Phone/dog.jpg"]
    got = json.loads(_ls(arch.url, "--duplicates", "--json").output)
    assert [(g["keys"], g["bytes"], g["redundant_bytes"]) for g in got["duplicates"]] == [
        (["2021/beach.jpg", "backup/beach.jpg", "export/beach copy.jpg"], 915, 615),
        (["2021/dog.jpg", "Phone/dog.jpg"], 170, 80)]
    assert (got["groups"], got["redundant_images"], got["redundant_bytes"],
            got["undigested"]) == (2, 3, 695, 1)
    lines = _ls(arch.url, "--duplicates", "-l").output.splitlines()
    assert lines[0].split()[:3] == ["615", "3", "copies"] and lines[0].endswith(
        "2021/beach.jpg, backup/beach.jpg, export/beach copy.jpg")
    assert lines[-1].startswith("3 redundant copies in 2 groups, 695 bytes (1 image(s)")
    # the other filters first: only what they list is compared
    assert _ls(arch.url, "--duplicates", "--prefix", "2021/").output == ""
    assert _ls(arch.url, "--duplicates", "--match", "dog").output.splitlines() == [
        "Phone/dog.jpg"]
    from pipeline.archive.listing import kept_first

    # the one kept: the fewest folder levels (a copy sits in a backup folder), the shortest key
    assert kept_first(["backup/2021/a.jpg", "2021/a copy.jpg", "2021/a.jpg", "b/a.jpg"]) == [
        "b/a.jpg", "2021/a.jpg", "2021/a copy.jpg", "backup/2021/a.jpg"]
    r = _ls(arch.url, "--duplicates", "--du", "1")
    assert r.exit_code == 2 and "not with --du" in r.output
