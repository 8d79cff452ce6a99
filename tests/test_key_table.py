"""The key table (storage/keytable.py): one ranged GET per lookup, exact fallbacks.

What is checked: a lookup after ``build_index`` reads the table's slots and the record's
bytes and nothing else (no listing, no row chunks, no shard index), on local disk, memory
and (marked ``s3``) the Ceph gateway counted by a proxy; every answer equals the old path's;
shards committed after the build, failed records, duplicates, discards, and damaged or
hostile tables all still give the right record or the right error; ``verify`` reports a
damaged table; archives without a table (older ones) read as before.
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_storage import create, make_records

from storage import (
    Archive,
    CorruptArchiveError,
    DuplicateKeyError,
    Record,
    RecordNotFoundError,
)
from storage.keytable import SLOT_BYTES, TableInfo


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    if request.param == "local":
        return str(tmp_path / "arch.zarr"), None
    if request.param == "memory":
        return f"memory://cdc-{uuid.uuid4().hex}/arch.zarr", None
    url, so = request.getfixturevalue("s3_url")
    return url, so


def filled(url: str, so: dict[str, Any] | None = None, shards: int = 4) -> tuple[Archive, list]:
    arch = create(url, so)
    recs = []
    for s in range(shards):
        rs = make_records(s, 16, failed=1 if s == 1 else 0, max_len=9000)
        arch.write_shard(s, rs)
        recs += rs
    return arch, recs


class Counter:
    """Every read of the archive's store: (kind, key, nbytes), from the store class."""

    def __init__(self, arch: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, int]] = []
        cls = type(arch.parts.arrays.payload.store)
        orig_get, orig_list = cls.get, cls.list_prefix

        async def get(store: Any, key: str, prototype: Any, byte_range: Any = None) -> Any:
            buf = await orig_get(store, key, prototype, byte_range)
            kind = "get" if byte_range is None else type(byte_range).__name__
            self.calls.append((kind, key, 0 if buf is None else len(buf)))
            return buf

        def list_prefix(store: Any, prefix: str) -> Any:
            self.calls.append(("list", prefix, 0))
            return orig_list(store, prefix)

        monkeypatch.setattr(cls, "get", get)
        monkeypatch.setattr(cls, "list_prefix", list_prefix)


def test_lookup_is_one_slot_read_then_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "a.zarr")
    arch, recs = filled(url)
    old = Archive.open(url, read_only=True)
    want = {k: old[k] for k in (recs[5].key, recs[40].key)}
    attr = arch.build_index()
    assert attr["keys"] == len(recs) and attr["shards"] == [[0, 4]]
    back = Archive.open(url, read_only=True)
    c = Counter(back, monkeypatch)
    for k, rec in want.items():
        c.calls.clear()
        assert back[k] == rec
        kinds = [(kind, key.split("/")[0]) for kind, key, _ in c.calls]
        assert kinds == [("RangeByteRequest", "index"), ("RangeByteRequest", "bitstream")]
        slots = c.calls[0][2]
        assert slots == attr["window"] * SLOT_BYTES
        assert c.calls[1][2] == len(rec.data)
    c.calls.clear()
    assert back.read_prefix(recs[7].key, 10) == recs[7].data[:10]
    assert [n for _, _, n in c.calls][1:] == [10]
    # the same archive without the table: the old path reads every shard's metadata
    arch.drop_index()
    plain = Archive.open(url, read_only=True)
    c.calls.clear()
    assert plain[recs[40].key] == want[recs[40].key]
    assert any(kind == "list" for kind, _, _ in c.calls)
    assert len(c.calls) > 10


def test_open_reads_zarr_json_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "a.zarr")
    filled(url, shards=1)
    probe = Archive.open(url)
    c = Counter(probe, monkeypatch)
    Archive.open(url, read_only=True)
    assert [(k, key) for k, key, _ in c.calls] == [("get", "zarr.json")]


def test_answers_equal_the_old_path(where: tuple[str, dict[str, Any] | None]) -> None:
    url, so = where
    arch, recs = filled(url, so)
    arch.build_index()
    late = make_records(9, 5, prefix="late")
    arch.write_shard(4, late)  # committed after the build: not covered by the table
    back = Archive.open(url, storage_options=so, read_only=True)
    for r in recs + late:
        got = back[r.key]
        assert got == r
        assert back.info(r.key).error == r.error
    failed = recs[16]
    assert not back[failed.key].ok and back.info(failed.key).error == failed.error
    with pytest.raises(RecordNotFoundError):
        Archive.open(url, storage_options=so)["no/such/key.png"]
    full = Archive.open(url, storage_options=so)
    assert full.keys() == [r.key for r in recs + late]
    assert len(full) == len(recs) + len(late)
    assert [i.key for i in full.failed()] == [failed.key]
    assert full.verify()["records"] == len(recs) + len(late)
    assert full.ensure_index() is True and full.ensure_index() is False
    assert TableInfo.from_attr(Archive.open(url, storage_options=so).attrs["key_table"],
                               full.parts.layout).shards == {0, 1, 2, 3, 4}


def test_discard_drops_the_table(tmp_path: Path) -> None:
    url = str(tmp_path / "a.zarr")
    arch, recs = filled(url)
    path = arch.build_index()["path"]
    arch.discard_shard(2)
    assert "key_table" not in Archive.open(url).attrs
    assert not (Path(url) / path).exists()
    with pytest.raises(RecordNotFoundError):
        Archive.open(url, read_only=True)[recs[2 * 16 + 3].key]
    assert Archive.open(url, read_only=True)[recs[3].key] == recs[3]


def test_stale_table_falls_back_to_shard_metadata(tmp_path: Path) -> None:
    """A table that survived a discard and rewrite (a pointer restored by a lost update)
    names the old bytes: the CRC check catches it and the shard's metadata decides."""
    url = str(tmp_path / "a.zarr")
    arch, recs = filled(url)
    attr = arch.build_index()
    blob = (Path(url) / attr["path"]).read_bytes()
    arch.discard_shard(0)
    new = [Record(r.key, bytes(reversed(r.data)) + b"!", height=r.height, width=r.width)
           for r in recs[:16]]
    arch.write_shard(0, new)
    (Path(url) / attr["path"]).parent.mkdir(exist_ok=True)
    (Path(url) / attr["path"]).write_bytes(blob)
    zj = Path(url) / "zarr.json"
    doc = json.loads(zj.read_text())
    doc["attributes"]["cdc_archive"]["key_table"] = attr
    zj.write_text(json.dumps(doc))
    back = Archive.open(url, read_only=True)
    assert back[new[4].key] == new[4]
    assert back[recs[20].key] == recs[20]
    with pytest.raises(CorruptArchiveError, match="key table: its entries for shard 0 differ"):
        Archive.open(url).verify()


def _table_path(url: str) -> tuple[Path, dict[str, Any]]:
    attr = Archive.open(url).attrs["key_table"]
    return Path(url) / attr["path"], attr


def test_hostile_slots_are_bounded_and_ignored(tmp_path: Path) -> None:
    url = str(tmp_path / "a.zarr")
    arch, recs = filled(url)
    arch.build_index()
    path, attr = _table_path(url)
    raw = bytearray(path.read_bytes())
    # every slot claims a record of 2**40 bytes at offset 2**50
    for i in range(attr["n_slots"]):
        if raw[i * SLOT_BYTES + 44]:  # status byte: an occupied slot
            struct.pack_into("<QI", raw, i * SLOT_BYTES + 20, 2**50, 2**31)
    path.write_bytes(bytes(raw))
    back = Archive.open(url, read_only=True)
    assert back[recs[9].key] == recs[9]  # bounds refused, then the shard metadata path
    assert back.parts.index.table_problem and "exceed" in back.parts.index.table_problem
    with pytest.raises(CorruptArchiveError, match="key table"):
        Archive.open(url).verify()


@pytest.mark.parametrize("bad", [
    {"window": 10**6}, {"path": "../../etc/passwd"}, {"n_slots": 3}, {"shards": [[0, 2**40]]},
    {"entries_bytes": "x"},
])
def test_hostile_table_attribute_is_ignored(tmp_path: Path, bad: dict[str, Any]) -> None:
    url = str(tmp_path / "a.zarr")
    arch, recs = filled(url, shards=2)
    arch.build_index()
    zj = Path(url) / "zarr.json"
    doc = json.loads(zj.read_text())
    doc["attributes"]["cdc_archive"]["key_table"].update(bad)
    zj.write_text(json.dumps(doc))
    back = Archive.open(url, read_only=True)
    assert back[recs[3].key] == recs[3] and len(back) == len(recs)
    assert back.parts.index.table_problem
    with pytest.raises(CorruptArchiveError, match="key_table attribute"):
        Archive.open(url).verify()


def test_missing_or_truncated_table_object(tmp_path: Path) -> None:
    url = str(tmp_path / "a.zarr")
    arch, recs = filled(url, shards=2)
    arch.build_index()
    path, _ = _table_path(url)
    path.write_bytes(path.read_bytes()[:100])
    back = Archive.open(url, read_only=True)
    assert back[recs[20].key] == recs[20] and back.keys() == [r.key for r in recs]
    path.unlink()
    back = Archive.open(url, read_only=True)
    assert back[recs[20].key] == recs[20]
    with pytest.raises(CorruptArchiveError, match="is missing"):
        Archive.open(url).verify()


def test_duplicate_key_is_still_refused(tmp_path: Path) -> None:
    url = str(tmp_path / "a.zarr")
    arch = create(url)
    a = make_records(0, 4)
    arch.write_shard(0, a)
    arch.write_shard(1, [a[2]])
    arch.build_index()
    back = Archive.open(url, read_only=True)
    with pytest.raises(DuplicateKeyError, match=r"shards \[0, 1\]"):
        back[a[2].key]
    assert back[a[1].key] == a[1]


def test_decoded_cache_is_not_probed_until_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "a.zarr")
    arch, recs = filled(url, shards=1)
    back = Archive.open(url, read_only=True)
    c = Counter(back, monkeypatch)
    assert back.cache_get(recs[1].key, "preview") is None
    assert c.calls == []
    arch.cache_put(recs[1].key, "preview", b"png")
    assert Archive.open(url, read_only=True).cache_get(recs[1].key, "preview") == b"png"
    # an archive made before the flag (no "decoded_cache" attribute) is always asked
    zj = Path(url) / "zarr.json"
    doc = json.loads(zj.read_text())
    del doc["attributes"]["cdc_archive"]["decoded_cache"]
    zj.write_text(json.dumps(doc))
    assert Archive.open(url, read_only=True).cache_get(recs[1].key, "preview") == b"png"


@pytest.mark.s3
def test_get_on_s3_is_three_requests(s3_server: Any, s3_url: tuple[str, dict[str, Any]]) -> None:
    """Open, slots, record: counted by a proxy in front of the gateway."""
    from s3_proxy import CountingProxy

    url, so = s3_url
    arch, recs = filled(url, so)
    arch.build_index()
    with CountingProxy(s3_server.endpoint) as proxy:
        pso = {**so, "client_kwargs": {"endpoint_url": proxy.endpoint}}
        back = Archive.open(url, storage_options=pso, read_only=True)
        rec = back[recs[37].key]
        assert back.cache_get(recs[37].key, "preview") is None
        reqs = proxy.snapshot()
    assert rec == recs[37]
    assert reqs[0].method == "GET" and reqs[0].path.endswith("/zarr.json")
    assert len(reqs) == 3, reqs
    assert all(r.method == "GET" and r.range for r in reqs[1:]), reqs
    assert reqs[2].body_bytes == len(rec.data)
