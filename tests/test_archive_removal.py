"""Removing records for good (storage.removal, `cdc rm`): the kept records unchanged, the
removed ones' bytes and keys gone from the store, interrupted removals finished or dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from storage import Archive, CorruptArchiveError, ReadOnlyArchiveError, Record
from storage import removal as removal_mod
from storage.errors import RecordNotFoundError

CAMERA = {"Make": "Canon", "DateTimeOriginal": "2021:07:04 18:22:10"}


def _payload(tag: str) -> bytes:
    return (f"<{tag}>" * 40).encode()


def _archive(tmp_path: Path) -> Archive:
    arch = Archive.create(str(tmp_path / "a.zarr"), codec_id="toy", model_id="m",
                          weights_digest="sha256:00", shard_size=4)
    arch.set_tiers({"standard": {"steps": 1}, "high": {"steps": 3}})
    arch.write_shard(0, [Record("a.jpg", _payload("A"), 2, 3, meta=CAMERA),
                         Record("secret.jpg", _payload("SECRET"), 2, 2, meta=CAMERA),
                         Record.failed("z.png", "z.png: not an image file")])
    arch.write_shard(1, [Record("b.jpg", _payload("B"), 4, 4)])
    arch.build_index()
    return arch


def _store_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_remove_keeps_the_others_and_deletes_the_bytes(tmp_path: Path):
    arch = _archive(tmp_path)
    arch.cache_put("secret.jpg", "standard", b"PNG-OF-SECRET")
    arch.cache_put("secret.jpg", "high", b"PNG-OF-SECRET-HIGH")
    arch.cache_put("a.jpg", "standard", b"PNG-OF-A")
    before = {k: arch[k] for k in ("a.jpg", "b.jpg", "z.png")}
    got = arch.remove(["secret.jpg"])
    assert got == {"removed": 1, "shards_replaced": 1, "bytes_freed": len(_payload("SECRET")),
                   "cached_deleted": 2}
    again = Archive.open(arch.url, read_only=True)
    assert sorted(again.keys()) == ["a.jpg", "b.jpg", "z.png"]
    for k, r in before.items():
        assert again[k] == r  # bytes, size, status and error copied, not re-encoded
    assert again.metadata("a.jpg") == CAMERA
    assert again.failed()[0].error == "z.png: not an image file"
    with pytest.raises(RecordNotFoundError):
        again["secret.jpg"]
    assert again.cache_get("a.jpg", "standard") == b"PNG-OF-A"
    assert again.cache_get("secret.jpg", "standard") is None
    assert again.verify()["records"] == 3
    assert 0 not in again.completed_shards() and again.manifest(2)["replaces"] == 0
    raw = _store_bytes(tmp_path / "a.zarr")
    assert b"SECRET" not in raw and b"secret.jpg" not in raw  # payload, key, key table
    assert again.pending_removals() == []


def test_removing_a_whole_shard_writes_no_copy(tmp_path: Path):
    arch = _archive(tmp_path)
    got = arch.remove(["b.jpg"])
    assert got["shards_replaced"] == 1
    assert Archive.open(arch.url).completed_shards() == [0]
    assert b"<B>" not in _store_bytes(tmp_path / "a.zarr")


def test_a_missing_key_removes_nothing(tmp_path: Path):
    arch = _archive(tmp_path)
    manifests = {s: arch.manifest(s) for s in arch.completed_shards()}
    with pytest.raises(RecordNotFoundError, match="'nope.jpg' \\(and 1 more\\); nothing"):
        arch.remove(["secret.jpg", "nope.jpg", "nope2.jpg"])
    assert {s: arch.manifest(s) for s in arch.completed_shards()} == manifests
    assert arch["secret.jpg"].data == _payload("SECRET")


def test_read_only_archive_refuses(tmp_path: Path):
    arch = _archive(tmp_path)
    with pytest.raises(ReadOnlyArchiveError):
        Archive.open(arch.url, read_only=True).remove(["a.jpg"])


def _remove_with_a_crash_in(tmp_path: Path, monkeypatch, owner: object, name: str) -> Archive:
    """Remove secret.jpg with ``owner.name`` failing as a crash would; the archive reopened."""
    arch = _archive(tmp_path)

    def crash(*a, **k):
        raise OSError("power cut")

    monkeypatch.setattr(owner, name, crash)
    with pytest.raises(OSError):
        arch.remove(["secret.jpg"])
    monkeypatch.undo()
    return Archive.open(arch.url)


def test_crash_after_the_copy_is_finished_later(tmp_path: Path, monkeypatch):
    arch = _remove_with_a_crash_in(tmp_path, monkeypatch, removal_mod, "_delete_shard")
    assert [(p["shard"], p["into"]) for p in arch.pending_removals()] == [(0, 2)]
    assert arch.duplicates() == {"a.jpg": [0, 2], "z.png": [0, 2]}  # identical copies
    assert arch.finish_removals() == [0]
    again = Archive.open(arch.url)
    assert sorted(again.keys()) == ["a.jpg", "b.jpg", "z.png"] and not again.duplicates()
    assert again.pending_removals() == [] and again.verify()["records"] == 3
    assert b"SECRET" not in _store_bytes(tmp_path / "a.zarr")


def test_crash_during_the_copy_removes_nothing(tmp_path: Path, monkeypatch):
    arch = _remove_with_a_crash_in(tmp_path, monkeypatch, Archive, "write_shard")
    assert arch.finish_removals() == []
    assert arch.pending_removals() == []
    assert arch["secret.jpg"].data == _payload("SECRET") and len(arch) == 4
    # and a second attempt goes through
    assert arch.remove(["secret.jpg"])["removed"] == 1


def test_hostile_intent_is_refused_in_one_line(tmp_path: Path):
    arch = _archive(tmp_path)
    d = tmp_path / "a.zarr" / "removals"
    d.mkdir()
    (d / "00000000.json").write_text(json.dumps({"shard": 0, "into": -5, "digest": "x"}))
    with pytest.raises(CorruptArchiveError, match="removals/00000000.json is not a removal"):
        arch.remove(["a.jpg"])
    assert arch["a.jpg"].data == _payload("A")
    (d / "00000000.json").unlink()
    for i in range(65):
        (d / f"{i:08d}.json").write_text("{}")
    with pytest.raises(CorruptArchiveError, match="holds 65 objects, over 64"):
        arch.remove(["a.jpg"])
    assert arch["a.jpg"].data == _payload("A")


# -- the command ----------------------------------------------------------------------------
def _rm(*args: str):
    return CliRunner().invoke(app, ["rm", *args])


def test_cli_rm_keys_file_prefix_and_dry_run(tmp_path: Path):
    arch = _archive(tmp_path)
    r = _rm(arch.url, "secret.jpg", "--dry-run")
    assert r.exit_code == 0 and "would remove 1 image" in r.output
    assert "secret.jpg" in Archive.open(arch.url)
    r = _rm(arch.url, "secret.jpg")
    assert r.exit_code == 0, r.output
    assert "removed 1 image" in r.output and "secret.jpg" not in Archive.open(arch.url)
    (tmp_path / "list.txt").write_text("b.jpg\n\n")
    r = _rm(arch.url, "--keys", str(tmp_path / "list.txt"), "--prefix", "z")
    assert r.exit_code == 0, r.output
    assert Archive.open(arch.url).keys() == ["a.jpg"]
    r = CliRunner().invoke(app, ["rm", arch.url, "--keys", "-"], input="# piped\na.jpg\n")
    assert r.exit_code == 0 and Archive.open(arch.url).keys() == [], r.output


def test_cli_rm_errors_are_one_line(tmp_path: Path):
    arch = _archive(tmp_path)
    for args, code, text in [
        ([arch.url, "nope.jpg"], 1, "no record 'nope.jpg'"),
        ([arch.url], 2, "name the images to remove"),
        ([arch.url, "--prefix", ""], 2, "name the images to remove"),
        ([arch.url, "--prefix", "q/"], 1, "no record starts with 'q/'"),
        ([str(tmp_path / "none.zarr"), "a.jpg"], 1, "none.zarr"),
        ([arch.url, "--keys", str(tmp_path / "missing.txt")], 1, "missing.txt"),
    ]:
        r = _rm(*args)
        assert r.exit_code == code, (args, r.output)
        assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
        assert text in r.output, r.output
    assert len(Archive.open(arch.url)) == 4


def test_verify_reports_an_interrupted_removal(tmp_path: Path, monkeypatch):
    arch = _remove_with_a_crash_in(tmp_path, monkeypatch, removal_mod, "_delete_shard")
    r = CliRunner().invoke(app, ["verify", arch.url])
    assert r.exit_code == 3
    assert "removal of records from shard 0 was interrupted" in r.output
    assert _rm(arch.url, "b.jpg").exit_code == 0  # finishes it on the way
    r = CliRunner().invoke(app, ["verify", arch.url])
    assert r.exit_code == 0, r.output
    assert sorted(Archive.open(arch.url).keys()) == ["a.jpg", "z.png"]


@pytest.mark.parametrize("many", [False, True])
def test_a_key_stored_twice_goes_from_both_shards(tmp_path: Path, monkeypatch, many: bool):
    """Lookups one by one (few keys) or a scan (many): either way every copy is found."""
    if many:
        monkeypatch.setattr(removal_mod, "_LOOKUPS", 0)
    arch = _archive(tmp_path)
    arch.write_shard(5, [Record("secret.jpg", _payload("SECRET"), 2, 2)])  # damaged: twice
    arch = Archive.open(arch.url)
    assert arch.duplicates() == {"secret.jpg": [0, 5]}
    got = arch.remove(["secret.jpg", "b.jpg"])
    assert got["removed"] == 2 and got["shards_replaced"] == 3
    again = Archive.open(arch.url)
    assert sorted(again.keys()) == ["a.jpg", "z.png"] and not again.duplicates()
    assert b"SECRET" not in _store_bytes(tmp_path / "a.zarr")
