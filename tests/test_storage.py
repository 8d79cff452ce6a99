"""Tests for storage/: round trips, shard writers, resume, and every error case.

Stores: a local directory, fsspec ``memory://``, and (marked ``s3``) a real Ceph RADOS
gateway from tests/s3_fixture.py. Payloads are small random byte strings made here.
"""

from __future__ import annotations

import ast
import json
import multiprocessing as mp
import os
import random
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import zarr

import storage
from storage import (
    Archive,
    ArchiveError,
    ArchiveExistsError,
    BadKeyError,
    CorruptArchiveError,
    DuplicateKeyError,
    FormatVersionError,
    ModelMismatchError,
    NotAnArchiveError,
    ReadOnlyArchiveError,
    Record,
    RecordNotFoundError,
    ShardCompleteError,
    ShardFullError,
    ShardTakenError,
    UnknownTierError,
)
from storage.backend import Location

DIGEST = "sha256:" + "ab" * 32
TIERS = {"preview": {"steps": 1, "gamma": 0.0}, "standard": {"steps": 4, "gamma": 0.5}}


# -- helpers --------------------------------------------------------------------------
def make_records(
    shard: int, n: int, *, seed: int = 0, failed: int = 0, prefix: str = "img", max_len: int = 3000
) -> list[Record]:
    rng = random.Random(f"{seed}-{shard}")
    out = []
    for i in range(n):
        key = f"{prefix}/s{shard:03d}/{i:04d}.png"
        if i < failed:
            out.append(Record.failed(key, f"codec failed on {key}", height=7, width=9))
        else:
            out.append(
                Record(
                    key,
                    rng.randbytes(rng.randint(1, max_len)),
                    height=rng.randint(1, 4000),
                    width=rng.randint(1, 4000),
                )
            )
    return out


def create(url: str, so: dict[str, Any] | None = None, **kw: Any) -> Archive:
    opts: dict[str, Any] = {
        "codec_id": "cdc",
        "model_id": "cdc-x-v1",
        "weights_digest": DIGEST,
        "codec_config": {"lmbda": 0.01},
        "tiers": TIERS,
        "shard_size": 16,
        "max_shards": 1024,
        "chunk_bytes": 4096,
        "storage_options": so,
    }
    opts.update(kw)
    return Archive.create(url, **opts)


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    """(url, storage_options) of a fresh, empty archive location on each store."""
    if request.param == "local":
        return str(tmp_path / "arch.zarr"), None
    if request.param == "memory":
        return f"memory://cdc-{uuid.uuid4().hex}/arch.zarr", None
    url, so = request.getfixturevalue("s3_url")
    return url, so


@pytest.fixture
def local(tmp_path: Path) -> str:
    return str(tmp_path / "arch.zarr")


def tree(path: str) -> dict[str, bytes]:
    out = {}
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(path))] = p.read_bytes()
    return out


# -- round trips ----------------------------------------------------------------------
def test_round_trip(where: tuple[str, dict[str, Any] | None]) -> None:
    url, so = where
    arch = create(url, so)
    shards = {0: make_records(0, 16, failed=2), 1: make_records(1, 5)}
    for k, recs in shards.items():
        with arch.writer(k, owner="job-1") as w:
            for r in recs:
                w.write(r)
        assert w.manifest is not None and w.manifest["records"] == len(recs)

    back = Archive.open(url, storage_options=so, read_only=True, expected_digest=DIGEST)
    assert back.codec_id == "cdc" and back.model_id == "cdc-x-v1"
    assert back.weights_digest == DIGEST and back.codec_config == {"lmbda": 0.01}
    assert back.tiers == TIERS and back.format_version == storage.FORMAT_VERSION
    assert back.created["by"].startswith("cdc-toolkit")
    assert back.completed_shards() == [0, 1]
    everything = shards[0] + shards[1]
    assert back.keys() == [r.key for r in everything] and len(back) == 21
    for r in everything:
        assert back[r.key] == r
        assert back.read_prefix(r.key, 10) == r.data[:10]
    assert list(back.records()) == everything
    assert back.read_many([r.key for r in everything[::-1]]) == everything[::-1]
    assert [i.key for i in back.failed()] == [r.key for r in shards[0][:2]]
    assert back.failed()[0].error.startswith("codec failed")
    info = back.info(shards[1][3].key)
    assert (info.shard, info.row, info.nbytes) == (1, 3, len(shards[1][3].data))
    s = back.summary()
    assert (s["records"], s["ok"], s["failed"], s["open_claims"]) == (21, 19, 2, [])
    assert back.verify()["completed_shards"] == 2
    assert "img/s000/0003.png" in back and "nope.png" not in back


def test_zarr_read_fallback(local: str) -> None:
    """Payload layouts this code did not write are read through zarr instead of ranges."""
    recs = make_records(0, 5)
    create(local).write_shard(0, recs)
    arch = Archive.open(local)
    arch._direct = False
    assert [arch[r.key] for r in recs] == recs
    assert arch.read_prefix(recs[1].key, 7) == recs[1].data[:7]


def test_file_url_and_plain_path_are_the_same_archive(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    create(f"file://{path}").write_shard(0, make_records(0, 3))
    assert Archive.open(str(path)).keys() == Archive.open(f"file://{path}").keys()


def test_bitstream_is_plain_zarr(local: str) -> None:
    """Any zarr v3 reader can get a record without this package (spec'd types only)."""
    arch = create(local)
    recs = make_records(3, 6)
    arch.write_shard(3, recs)
    g = zarr.open_group(local, mode="r")
    i = arch.info(recs[4].key)
    off = int(g["offset"][3 * 16 + 4])
    assert g["key"][3 * 16 + 4] == recs[4].key
    assert bytes(g["bitstream"][3, off : off + i.nbytes]) == recs[4].data
    meta = json.loads((Path(local) / "zarr.json").read_text())
    assert "consolidated_metadata" in meta


def test_append_and_consolidated_view(where: tuple[str, dict[str, Any] | None]) -> None:
    url, so = where
    arch = create(url, so)
    arch.write_shard(0, make_records(0, 4))
    reader = Archive.open(url, storage_options=so)
    assert len(reader) == 4
    k = arch.next_shard()
    assert k == 1
    arch.write_shard(k, make_records(k, 4, prefix="batch2"))
    assert arch.next_shard() == 2
    # An open reader finds the new shard on a miss; a fresh open (consolidated) sees both.
    assert reader["batch2/s001/0002.png"].key == "batch2/s001/0002.png"
    assert len(Archive.open(url, storage_options=so)) == 8


def test_tiers_update_and_cache(where: tuple[str, dict[str, Any] | None]) -> None:
    url, so = where
    arch = create(url, so)
    arch.write_shard(0, make_records(0, 2))
    key = "img/s000/0001.png"
    assert arch.cache_get(key, "preview") is None
    arch.cache_put(key, "preview", b"\x89PNG fake")
    assert arch.cache_get(key, "preview") == b"\x89PNG fake"
    assert arch.cache_get(key, "standard") is None
    arch.set_tiers({"preview": {"steps": 2, "gamma": 0.0}, "hq": {"steps": 8}})
    reopened = Archive.open(url, storage_options=so)
    assert reopened.tiers["preview"] == {"steps": 2, "gamma": 0.0} and "standard" in reopened.tiers
    assert reopened.cache_get(key, "preview") is None  # settings changed: old entry unreachable
    reopened.cache_put(key, "hq", b"hq")
    reopened.cache_clear("hq")
    assert reopened.cache_get(key, "hq") is None
    with pytest.raises(UnknownTierError, match="no quality tier 'ultra'"):
        reopened.cache_get(key, "ultra")
    with pytest.raises(BadKeyError):
        reopened.cache_put("../etc/passwd", "hq", b"x")
    with pytest.raises(BadKeyError):
        reopened.set_tiers({"../x": {}})
    reopened.set_tiers({"only": {"steps": 1}}, replace=True)
    assert Archive.open(url, storage_options=so).tiers == {"only": {"steps": 1}}
    assert len(Archive.open(url, storage_options=so)) == 2


def test_pickle_reopens(where: tuple[str, dict[str, Any] | None]) -> None:
    import pickle

    url, so = where
    arch = create(url, so)
    arch.write_shard(0, make_records(0, 2))
    again = pickle.loads(pickle.dumps(arch))
    assert again.keys() == arch.keys() and again.url == url


# -- writers --------------------------------------------------------------------------
def test_rerun_of_finished_shard_changes_nothing(local: str) -> None:
    arch = create(local)
    recs = make_records(0, 8)
    arch.write_shard(0, recs)
    before = tree(local)
    with arch.writer(0) as w:  # same keys and bytes
        w.write_all(recs)
    assert w.already_complete and w.unchanged
    # same keys, different bytes (a non-deterministic codec): default "keys" rule keeps the old
    with arch.writer(0) as w:
        w.write_all(make_records(0, 8, seed=99))
    assert w.unchanged and tree(local) == before
    with (
        pytest.raises(ShardCompleteError, match="different content"),
        arch.writer(0, if_complete="exact") as w,
    ):
        w.write_all(make_records(0, 8, seed=99))
    with pytest.raises(ShardCompleteError, match="shard 0 is already complete with different keys"):
        arch.write_shard(0, recs[:5])
    with pytest.raises(ShardCompleteError):
        arch.write_shard(0, recs, if_complete="error")
    assert tree(local) == before
    assert [r.data for r in Archive.open(local).records()] == [r.data for r in recs]


def test_second_writer_on_taken_shard_is_refused(where: tuple[str, dict[str, Any] | None]) -> None:
    url, so = where
    arch = create(url, so)
    first = arch.writer(2, owner="job-A").open()
    with pytest.raises(ShardTakenError, match=r"shard 2 is claimed by 'job-A'.*takeover=True"):
        Archive.open(url, storage_options=so).writer(2, owner="job-B").open()
    assert arch.claims()[2]["owner"] == "job-A"
    first.write_all(make_records(2, 3))
    first.commit()
    assert arch.claims() == {} and arch.completed_shards() == [2]


def test_claim_race_has_one_winner(where: tuple[str, dict[str, Any] | None]) -> None:
    url, so = where
    create(url, so)
    archives = [Archive.open(url, storage_options=so) for _ in range(6)]

    def grab(a: Archive) -> bool:
        try:
            a.writer(5).open()
            return True
        except ShardTakenError:
            return False

    with ThreadPoolExecutor(6) as pool:
        assert sum(pool.map(grab, archives)) == 1


def test_writer_error_releases_claim_and_writes_nothing(local: str) -> None:
    arch = create(local)
    with pytest.raises(RuntimeError), arch.writer(1) as w:
        w.write_all(make_records(1, 3))
        raise RuntimeError("encoder crashed")
    assert arch.claims() == {} and arch.completed_shards() == []
    assert not (Path(local) / "bitstream" / "c").exists()
    arch.write_shard(1, make_records(1, 3))
    assert len(arch) == 3


def test_lost_claim_is_detected(local: str) -> None:
    arch = create(local)
    w = arch.writer(0, owner="old").open()
    w.write_all(make_records(0, 2))
    new = arch.writer(0, owner="new", takeover=True).open()
    assert new.took_over is not None and new.took_over["owner"] == "old"
    with pytest.raises(ShardTakenError, match="lost its claim"):
        w.commit()
    assert arch.completed_shards() == []
    new.write_all(make_records(0, 2, seed=1))
    new.commit()
    assert [r.data for r in arch.records()] == [r.data for r in make_records(0, 2, seed=1)]


def _write_shards(url: str, so: dict[str, Any] | None, shards: list[int]) -> int:
    arch = Archive.open(url, storage_options=so)
    for k in shards:
        with arch.writer(k, owner=f"proc-{os.getpid()}") as w:
            w.write_all(make_records(k, 16, failed=k % 3))
    return len(shards)


def run_parallel_writers(url: str, so: dict[str, Any] | None) -> None:
    create(url, so)
    plan = [[0, 3], [1, 4], [2, 5]]
    ctx = mp.get_context("spawn")  # no fork: zarr/s3fs run background event loops
    with ctx.Pool(3) as pool:
        assert sum(pool.starmap(_write_shards, [(url, so, p) for p in plan])) == 6
    back = Archive.open(url, storage_options=so)
    assert back.completed_shards() == list(range(6)) and back.claims() == {}
    expected = [r for k in range(6) for r in make_records(k, 16, failed=k % 3)]
    assert list(back.records()) == expected
    assert len(back) == 96 and back.verify()["records"] == 96


def test_parallel_process_writers_lose_nothing(local: str) -> None:
    run_parallel_writers(local, None)


def _crash_writer(url: str, shard: int, when: str) -> None:
    arch = Archive.open(url)
    w = arch.writer(shard, owner="job-1").open()
    w.write_all(make_records(shard, 12))
    if when == "mid-commit":  # every array written, killed before the manifest entry
        create_ = arch._loc.create

        async def die_on_manifest(key: str, data: bytes) -> bool:
            if key.startswith("manifest/"):
                os.kill(os.getpid(), signal.SIGKILL)
            return await create_(key, data)

        arch._loc.create = die_on_manifest  # type: ignore[method-assign]
        w.commit()
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("when", ["mid-shard", "mid-commit"])
def test_resume_after_writer_killed(local: str, when: str) -> None:
    arch = create(local)
    arch.write_shard(0, make_records(0, 16))
    proc = mp.get_context("spawn").Process(target=_crash_writer, args=(local, 1, when))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    # The rerun: shard 1 is not complete and its reader view is unaffected...
    rerun = Archive.open(local)
    assert rerun.completed_shards() == [0] and len(rerun) == 16
    assert rerun.claims()[1]["owner"] == "job-1"
    assert rerun.next_shard() == 2
    # ...a plain writer is refused (the claim names the dead owner), takeover re-writes it.
    with pytest.raises(ShardTakenError, match="job-1"):
        rerun.writer(1, owner="job-2").open()
    fresh = make_records(1, 5, seed=7)  # smaller than the crashed attempt
    with rerun.writer(1, owner="job-2", takeover=True) as w:
        w.write_all(fresh)
    assert w.took_over is not None and w.took_over["owner"] == "job-1"
    back = Archive.open(local)
    assert back.completed_shards() == [0, 1] and back.claims() == {}
    assert list(back.records([1])) == fresh
    assert back.verify()["records"] == 21


# -- error cases ----------------------------------------------------------------------
def test_open_things_that_are_not_archives(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(NotAnArchiveError, match="does not exist"):
        Archive.open(str(missing))
    assert not missing.exists()  # opening never creates anything
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotAnArchiveError, match="no zarr.json"):
        Archive.open(str(empty))
    zarr.open_group(str(tmp_path / "plain"), mode="w", zarr_format=3, attributes={"x": 1})
    with pytest.raises(NotAnArchiveError, match="without 'cdc_archive'"):
        Archive.open(str(tmp_path / "plain"))
    zarr.open_group(str(tmp_path / "v2"), mode="w", zarr_format=2)
    with pytest.raises(NotAnArchiveError, match="zarr v2"):
        Archive.open(str(tmp_path / "v2"))
    zarr.create_array(str(tmp_path / "arr"), shape=(3,), dtype="uint8")
    with pytest.raises(NotAnArchiveError, match="not a zarr v3 group"):
        Archive.open(str(tmp_path / "arr"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "zarr.json").write_text("{not json")
    with pytest.raises(NotAnArchiveError, match="not valid JSON"):
        Archive.open(str(tmp_path / "junk"))
    with pytest.raises(NotAnArchiveError):
        Archive.open(f"memory://nothing-{uuid.uuid4().hex}")


def test_create_never_overwrites(local: str, tmp_path: Path) -> None:
    arch = create(local)
    arch.write_shard(0, make_records(0, 3))
    before = tree(local)
    with pytest.raises(ArchiveExistsError, match="already holds data"):
        create(local)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ArchiveExistsError):
        create(str(other))
    assert tree(local) == before and (other / "cat.jpg").read_bytes() == b"meow"


def test_newer_format_version_is_refused(local: str) -> None:
    create(local).write_shard(0, make_records(0, 2))
    zj = Path(local) / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["attributes"]["cdc_archive"]["format_version"] = storage.FORMAT_VERSION + 1
    zj.write_text(json.dumps(meta))
    with pytest.raises(FormatVersionError, match=r"version 2 is newer .* upgrade"):
        Archive.open(local)


def test_model_digest_mismatch(local: str) -> None:
    arch = create(local)
    arch.check_model(DIGEST)
    arch.check_model(DIGEST.split(":", 1)[1].upper())  # prefix and case do not matter
    with pytest.raises(ModelMismatchError, match="cdc-x-v1.*sha256:ffff"):
        Archive.open(local, expected_digest="sha256:ffff")
    with pytest.raises(ModelMismatchError):
        arch.check_model("sha256:" + "cd" * 32)


BAD_KEYS = [
    "",
    "..",
    "../x",
    "a/../../b",
    "/etc/passwd",
    "C:/x",
    "a\\b",
    "a\nb",
    "a\x00b",
    "tab\there",
    "a//b",
    "./a",
    "a/",
    "x\u2028y",
    "\x7f",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(local: str, key: str) -> None:
    arch = create(local, shard_size=4, max_shards=4)
    with pytest.raises(BadKeyError, match="bad key"), arch.writer(0) as w:
        w.write(Record("fine.png", b"x", 1, 1))
        w.write(Record(key, b"x", 1, 1))
    assert arch.completed_shards() == [] and arch.claims() == {}
    with pytest.raises(BadKeyError):
        arch[key]
    assert storage.key_problem("ok/nested/ключ 1.png") is None


def test_duplicate_keys(local: str) -> None:
    arch = create(local)
    with pytest.raises(DuplicateKeyError, match="written twice"), arch.writer(0) as w:
        w.write(Record("a.png", b"1", 1, 1))
        w.write(Record("a.png", b"2", 1, 1))
    arch.write_shard(0, [Record("a.png", b"1", 1, 1), Record("b.png", b"2", 1, 1)])
    with pytest.raises(DuplicateKeyError, match="already stored in shard 0"):
        arch.write_shard(1, [Record("b.png", b"3", 1, 1)], check_duplicates=True)
    assert arch.completed_shards() == [0]
    arch.write_shard(1, [Record("b.png", b"3", 1, 1), Record("c.png", b"4", 1, 1)])
    back = Archive.open(local)
    assert back.duplicates() == {"b.png": [0, 1]}
    with pytest.raises(
        DuplicateKeyError, match=r"'b.png' is stored more than once, in shards \[0, 1\]"
    ):
        back["b.png"]
    assert back["c.png"].data == b"4" and back.keys() == ["a.png", "b.png", "c.png"]
    with pytest.raises(DuplicateKeyError):
        back.verify()


def test_shard_limits(local: str) -> None:
    arch = create(local, shard_size=4, max_shards=8, chunk_bytes=1024, max_shard_bytes=4096)
    with pytest.raises(ShardFullError, match="shard_size=4"):
        arch.write_shard(0, make_records(0, 5, max_len=10))
    with pytest.raises(ShardFullError, match="max_shard_bytes=4096"):
        arch.write_shard(0, [Record("a", b"x" * 3000, 1, 1), Record("b", b"y" * 2000, 1, 1)])
    with pytest.raises(ShardFullError, match="outside 0..7"):
        arch.writer(8)
    assert arch.completed_shards() == []
    arch.write_shard(0, [Record("a", b"x" * 4096, 1, 1)])  # exactly full
    assert arch["a"].data == b"x" * 4096


def test_read_only_and_missing(local: str) -> None:
    create(local).write_shard(0, make_records(0, 2))
    ro = Archive.open(local, read_only=True)
    with pytest.raises(ReadOnlyArchiveError):
        ro.writer(1)
    with pytest.raises(ReadOnlyArchiveError):
        ro.set_tiers({"x": {}})
    with pytest.raises(RecordNotFoundError, match="no record 'nope.png'") as ei:
        ro["nope.png"]
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, ArchiveError)
    assert ro.get("nope.png") is None


def _corrupt_setup(
    local: str, so: dict[str, Any] | None = None
) -> tuple[Archive, list[Record], list[Record]]:
    arch = create(local, so)
    a, b = make_records(0, 10, max_len=9000), make_records(1, 10, max_len=9000)
    arch.write_shard(0, a)
    arch.write_shard(1, b)
    return arch, a, b


def test_missing_row_chunk_is_detected(local: str) -> None:
    _, a, b = _corrupt_setup(local)
    (Path(local) / "height" / "c" / "1").unlink()
    back = Archive.open(local)
    with pytest.raises(CorruptArchiveError, match="shard 1: record metadata does not match"):
        back[b[0].key]
    assert Archive.open(local).read_prefix(a[0].key, 4) == a[0].data[:4]  # shard 0 still fine
    with pytest.raises(CorruptArchiveError, match="1 problem"):
        Archive.open(local).verify()
    with pytest.raises(CorruptArchiveError, match="cannot be read"):
        Archive.open(local).keys()
    fixer = Archive.open(local)  # the repair path: forget the shard, write it again
    fixer.discard_shard(1)
    fixer.write_shard(1, b)
    assert Archive.open(local).verify()["records"] == 20


def test_garbage_row_chunk_is_detected(local: str) -> None:
    _corrupt_setup(local)
    (Path(local) / "key" / "c" / "1").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CorruptArchiveError, match="shard 1"):
        Archive.open(local).records([1]).__next__()


def test_missing_payload_object_is_detected(local: str) -> None:
    _, a, b = _corrupt_setup(local)
    (Path(local) / "bitstream" / "c" / "1" / "0").unlink()
    back = Archive.open(local)
    with pytest.raises(CorruptArchiveError, match="payload object 'bitstream/c/1/0' is missing"):
        back[b[2].key]
    assert back[a[2].key] == a[2]


def test_flipped_payload_byte_fails_crc(local: str) -> None:
    arch, a, _ = _corrupt_setup(local)
    obj = Path(local) / "bitstream" / "c" / "0" / "0"
    raw = bytearray(obj.read_bytes())
    info = arch.info(a[3].key)
    off = sum(len(r.data) for r in a[:3])
    raw[off + info.nbytes // 2] ^= 0xFF
    obj.write_bytes(bytes(raw))
    back = Archive.open(local)
    with pytest.raises(CorruptArchiveError, match=r"img/s000/0003.png.*CRC-32"):
        back[a[3].key]
    assert back[a[4].key] == a[4]


def test_corrupt_shard_index_and_manifest(local: str) -> None:
    _, a, _ = _corrupt_setup(local)
    obj = Path(local) / "bitstream" / "c" / "0" / "0"
    raw = bytearray(obj.read_bytes())
    raw[-10] ^= 0xFF
    obj.write_bytes(bytes(raw))
    with pytest.raises(CorruptArchiveError, match="CRC32C"):
        Archive.open(local)[a[0].key]
    (Path(local) / "manifest" / "00000001.json").write_text("{oops")
    with pytest.raises(CorruptArchiveError, match="shard 1: manifest entry is corrupt"):
        Archive.open(local).keys()


def test_reads_touch_only_the_record(
    where: tuple[str, dict[str, Any] | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, a, _ = _corrupt_setup(*where)
    back = Archive.open(where[0], storage_options=where[1])
    back.keys()  # build the index (reads key/metadata chunks, no payload)
    calls: list[tuple[str, int, int]] = []
    orig_range, orig_get = Location.get_range, Location.get

    async def get_range(self: Location, key: str, start: int, end: int) -> bytes | None:
        calls.append((key, start, end))
        return await orig_range(self, key, start, end)

    async def get(self: Location, key: str) -> bytes | None:
        assert not key.startswith("bitstream/"), "whole payload object read"
        return await orig_get(self, key)

    monkeypatch.setattr(Location, "get_range", get_range)
    monkeypatch.setattr(Location, "get", get)
    assert back.read_prefix(a[5].key, 16) == a[5].data[:16]
    assert [e - s for _, s, e in calls] == [min(16, len(a[5].data))]
    calls.clear()
    assert back[a[6].key] == a[6]
    assert sum(e - s for _, s, e in calls) == len(a[6].data)


def test_storage_does_not_import_torch_or_codec() -> None:
    forbidden = {"torch", "cdc", "pipeline", "jobs", "torchvision", "compressai"}
    for path in Path(storage.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{path.name} imports {n}"
