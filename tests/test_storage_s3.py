"""storage/ against a real S3 server (Ceph RADOS gateway on 127.0.0.1, tests/s3_fixture.py).

The store-generic tests in test_storage.py also run on S3 (their ``s3`` parameter); these
cover what only matters there: processes writing over the network, credentials from the
environment, objects vanishing under a reader, and exclusive creates on the server.
"""

from __future__ import annotations

from typing import Any

import pytest
import s3fs
from test_storage import create, make_records, run_parallel_writers

from storage import (
    Archive,
    ArchiveError,
    ArchiveNotFoundError,
    CorruptArchiveError,
    NotAnArchiveError,
    ShardTakenError,
    StoreAccessError,
)

pytestmark = pytest.mark.s3


def test_parallel_process_writers_on_s3(s3_url: tuple[str, dict[str, Any]]) -> None:
    run_parallel_writers(*s3_url)


def test_credentials_from_environment(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    url = f"s3://{bucket}/env-archive"
    s3fs.S3FileSystem.clear_instance_cache()  # make s3fs read the environment afresh
    try:
        create(url).write_shard(0, make_records(0, 3))  # no storage_options at all
        assert len(Archive.open(url)) == 3
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_not_an_archive_on_s3(s3_server: Any) -> None:
    bucket = s3_server.new_bucket()
    fs = s3_server.filesystem()
    fs.pipe(f"{bucket}/photos/cat.jpg", b"meow")
    with pytest.raises(NotAnArchiveError, match="no zarr.json") as e:
        Archive.open(f"s3://{bucket}/photos", storage_options=s3_server.storage_options)
    assert not isinstance(e.value, ArchiveNotFoundError)  # holds other data: not "absent"
    with pytest.raises(ArchiveNotFoundError):
        Archive.open(f"s3://{bucket}/nothing", storage_options=s3_server.storage_options)
    assert fs.cat(f"{bucket}/photos/cat.jpg") == b"meow"
    # The store's own problems are typed (StoreAccessError.reason) and say which.
    missing = f"bucket 'no-such-bucket-{bucket}' does not exist"
    with pytest.raises(StoreAccessError, match=missing) as e:
        create(f"s3://no-such-bucket-{bucket}/a", s3_server.storage_options)
    assert e.value.reason == "no-bucket"
    wrong = {**s3_server.storage_options, "secret": "wrong-secret"}
    with pytest.raises(ArchiveError, match="refused the credentials") as e:
        Archive.open(f"s3://{bucket}/photos", storage_options=wrong)
    assert e.value.reason == "credentials"


def test_missing_object_and_taken_shard_on_s3(
    s3_server: Any, s3_url: tuple[str, dict[str, Any]]
) -> None:
    url, so = s3_url
    arch = create(url, so)
    a, b = make_records(0, 6), make_records(1, 6)
    arch.write_shard(0, a)
    arch.write_shard(1, b)
    s3_server.filesystem().rm(url[len("s3://") :] + "/bitstream/c/1/0")
    back = Archive.open(url, storage_options=so)
    with pytest.raises(CorruptArchiveError, match="payload object 'bitstream/c/1/0' is missing"):
        back[b[0].key]
    assert back[a[0].key] == a[0]
    holder = back.writer(7, owner="job-A").open()
    with pytest.raises(ShardTakenError, match="job-A"):
        Archive.open(url, storage_options=so).writer(7).open()
    holder.abort()
    assert back.claims() == {}


def test_record_metadata_on_s3(s3_server: Any, s3_url: tuple[str, dict[str, Any]]) -> None:
    """The per-shard metadata object on a real object store: written before the manifest,
    read once, deleted with a discarded shard; a replaced object is caught by its digest."""
    from storage import Record

    url, so = s3_url
    arch = create(url, so)
    meta = {"DateTimeOriginal": "2021:07:04 18:22:10", "Make": "Canon"}
    arch.write_shard(0, [Record("a.jpg", b"xx", 2, 2, meta=meta), Record("b.jpg", b"yy", 2, 2)])
    arch.write_shard(1, [Record("c.jpg", b"zz", 2, 2)])
    back = Archive.open(url, storage_options=so)
    assert back.metadata("a.jpg") == meta and back.metadata("b.jpg") == back.metadata("c.jpg") == {}
    fs, path = s3_server.filesystem(), url[len("s3://"):]
    assert fs.ls(path + "/meta") == [path + "/meta/00000000.json"]
    fs.pipe(path + "/meta/00000000.json", b'{"shard":0,"records":{"a.jpg":{"Make":"Nikon"}}}')
    with pytest.raises(CorruptArchiveError, match="does not match its manifest digest"):
        Archive.open(url, storage_options=so).metadata("a.jpg")
    arch.discard_shard(0)
    assert not fs.exists(path + "/meta/00000000.json")


def test_remove_records_on_s3(s3_server: Any, s3_url: tuple[str, dict[str, Any]]) -> None:
    """A removal on a real object store: the kept records readable, the removed record's
    objects (payload, row chunks, metadata, cached decodes, old key table) deleted."""
    from storage import Record

    url, so = s3_url
    arch = create(url, so)
    arch.set_tiers({"standard": {"steps": 1}})
    meta = {"Make": "Canon"}
    arch.write_shard(0, [Record("a.jpg", b"A" * 50, 2, 2, meta=meta),
                         Record("secret.jpg", b"SECRET" * 10, 2, 2, meta=meta)])
    arch.build_index()
    arch.cache_put("secret.jpg", "standard", b"PNG-OF-SECRET")
    got = arch.remove(["secret.jpg"])
    assert got["shards_replaced"] == 1 and got["cached_deleted"] == 1
    back = Archive.open(url, storage_options=so)
    assert back.keys() == ["a.jpg"] and back["a.jpg"].data == b"A" * 50
    assert back.metadata("a.jpg") == meta and back.pending_removals() == []
    back.verify()
    fs, path = s3_server.filesystem(), url[len("s3://"):]
    blobs = b"".join(fs.cat(p) for p in fs.find(path))
    assert b"SECRET" not in blobs and b"secret.jpg" not in blobs
