"""Every archive command against the real S3 server (Ceph RGW on 127.0.0.1, tests/s3_fixture.py),
run as a user runs it: ``cdc`` in a subprocess, the credentials and the endpoint only in
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_ENDPOINT_URL``.

``cdc archive`` from a glob on S3 into a new ``s3://`` URL, the rerun (nothing rewritten),
``get`` at every tier, ``get --bpp`` on a DiffC record (through a counting proxy: only the
prefix's bytes are fetched), ``export``, ``verify`` (clean, then with one object
corrupted), ``serve`` with its gallery's thumbnails, and the store's problems (missing
bucket, refused credentials, unreachable endpoint, read-only bucket: one line each, exit 1,
nothing written). Also, in-process: "absent" is decided by type on every kind of store.

Outputs are compared with the same streams decoded in this process, so the tests check
content, not only exit codes. Skips (with the apt command) only without the Ceph packages.
About 3-4 min on 2 loaded cores: each command is a fresh interpreter (torch import), the
archive, export and serve commands start a local Ray.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from storage import Archive, ArchiveExistsError, ArchiveNotFoundError, NotAnArchiveError
from tests.conftest import smooth_image
from tests.s3_proxy import CountingProxy
from tests.serve_helpers import CdcServe, free_port, http_get

pytestmark = pytest.mark.s3  # (conftest caps every test at 300 s)
ROOT = Path(__file__).resolve().parents[1]
N = 3  # images in the collection
SIZE = (40, 56)


def user_env(server: Any, endpoint: str | None = None, **extra: str) -> dict[str, str]:
    """A user's environment: the standard AWS variables, nothing from the test session."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "CDC_S3_"))}
    env.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key,
               AWS_ENDPOINT_URL=endpoint or server.endpoint, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]))
    env.update(extra)
    return env


def cdc(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def objects(server: Any, prefix: str) -> dict[str, tuple[str, Any]]:
    """``{key: (etag, last modified)}`` of every object under ``prefix`` (bucket/path)."""
    fs = server.filesystem()
    fs.invalidate_cache()
    return {k: (v.get("ETag"), v.get("LastModified"))
            for k, v in fs.find(prefix, detail=True).items()}


def pixels(data: bytes | Path) -> np.ndarray:
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    return np.asarray(Image.open(src).convert("RGB"), dtype=np.int16)


def assert_same_image(got: bytes | Path, want: bytes) -> None:
    """Same decoded pixels as this process decodes (±1: another process, same threads)."""
    a, b = pixels(got), pixels(want)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1, np.abs(a - b).max()


# -- the collection, its reference encoding, and the archive job -------------------------
@pytest.fixture(scope="module")
def collection(s3_server, tmp_path_factory) -> dict[str, Any]:
    """``N`` images on S3 (``s3://<bucket>/photos/imgK.png``) and locally."""
    local = tmp_path_factory.mktemp("photos")
    bucket = s3_server.new_bucket("cdc-src")
    fs = s3_server.filesystem()
    for i in range(N):
        Image.fromarray(smooth_image(*SIZE, seed=20 + i)).save(local / f"img{i}.png")
        fs.put_file(str(local / f"img{i}.png"), f"{bucket}/photos/img{i}.png")
    return {"local": local, "glob": f"s3://{bucket}/photos/*.png"}


@pytest.fixture(scope="module")
def reference(collection, codec, s3_server) -> Archive:
    """The same images encoded in this process (one torch thread, the CLI's batching) into
    an archive on S3: what the archive job must reproduce, and what ``get``, ``verify``,
    ``export`` and ``serve`` read (so they do not depend on the archive job's Ray)."""
    import torch

    from pipeline.archive import (
        EncodeOptions,
        encode_shard,
        open_or_create,
        plan_inputs,
        plan_shards,
    )

    url = f"s3://{s3_server.new_bucket('cdc-ref')}/photos.zarr"
    so = s3_server.storage_options
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        items, _ = plan_inputs(str(collection["local"]))
        arch, _ = open_or_create(url, codec, shard_size=64, storage_options=so)
        for plan in plan_shards(items, set(), set(), 64):
            list(encode_shard(codec, arch, plan, options=EncodeOptions(batch_size=8)))
    finally:
        torch.set_num_threads(old)
    return Archive.open(url, storage_options=so)


@pytest.fixture
def ref_env(s3_server, tmp_path) -> dict[str, str]:
    return user_env(s3_server, CDC_CACHE_DIR=str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def job(s3_server, collection, weights_file, tmp_path_factory) -> dict[str, Any]:
    """``cdc archive 's3://src/photos/*.png' s3://<new bucket>/photos.zarr`` (the bucket
    made beforehand, the URL new)."""
    bucket = s3_server.new_bucket("cdc-e2e")
    url = f"s3://{bucket}/photos.zarr"
    env = user_env(s3_server, CDC_CACHE_DIR=str(tmp_path_factory.mktemp("cache")))
    args = ("archive", collection["glob"], url, "--model", weights_file, "--num-cpus", "1",
            "--no-progress", "--json")
    return {"url": url, "bucket": bucket, "env": env, "args": args, "first": cdc(env, *args)}


def test_archive_into_a_new_s3_url(job, reference, s3_server):
    first = job["first"]
    assert first.returncode == 0, first.stdout + first.stderr
    summary = json.loads(first.stdout)
    assert summary["created"] is True and summary["images"] == {"encoded": N, "ok": N, "failed": 0}
    arch = Archive.open(job["url"], storage_options=s3_server.storage_options)
    assert sorted(arch) == sorted(reference) == [f"img{i}.png" for i in range(N)]
    for k in reference:  # the very streams this process encodes
        assert arch[k].data == reference[k].data, k
        assert (arch[k].height, arch[k].width) == SIZE


def test_rerun_writes_nothing(job, s3_server):
    before = objects(s3_server, f"{job['bucket']}/photos.zarr")
    second = cdc(job["env"], *job["args"])
    after = objects(s3_server, f"{job['bucket']}/photos.zarr")
    assert second.returncode == 0, second.stdout + second.stderr
    again = json.loads(second.stdout)
    assert again["created"] is False and again["already_archived"] == N
    assert again["images"]["encoded"] == 0 and again["shards"]["written"] == 0
    assert after == before, "the rerun rewrote (or left) objects"
    assert not any("/claims/" in k for k in after)


@pytest.mark.parametrize("tier", ["preview", "standard", "high"])
def test_get_every_tier(ref_env, reference, codec, weights_file, tier, tmp_path):
    from pipeline.archive import Reader

    out = tmp_path / f"{tier}.png"
    r = cdc(ref_env, "get", reference.url, "img1.png", str(out), "--tier", tier,
            "--model", weights_file, "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"img1.png -> {out}: {SIZE[1]}x{SIZE[0]}, tier {tier} ")
    want = Reader(reference, codec, cache=None, archive_cache=False).get("img1.png", tier)
    assert_same_image(out, want.data)


def test_export(ref_env, reference, codec, weights_file, tmp_path):
    from pipeline.archive import Reader

    dest = tmp_path / "out"
    r = cdc(ref_env, "export", reference.url, str(dest), "--tier", "preview", "--model",
            weights_file, "--num-cpus", "1", "--no-cache", "--no-progress", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in dest.iterdir()) == [f"img{i}.png" for i in range(N)]
    reader = Reader(reference, codec, cache=None, archive_cache=False)
    for i in range(N):
        assert_same_image(dest / f"img{i}.png", reader.get(f"img{i}.png", "preview").data)


def test_serve_gallery_thumbnails_from_s3(s3_server, reference, weights_file, tmp_path,
                                         monkeypatch):
    for k in [k for k in os.environ if k.startswith(("AWS_", "CDC_S3_"))]:
        monkeypatch.delenv(k)
    for k, v in user_env(s3_server).items():
        monkeypatch.setenv(k, v)
    for k in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        monkeypatch.setenv(k, "60")  # Serve's 5 s/10 s kill its proxy on a loaded 2-core VM
    with CdcServe(reference.url, model=weights_file, cache_dir=str(tmp_path / "cache"),
                  log=tmp_path / "serve.log", args=["--batch-wait-ms", "5"]) as base:
        status, headers, page = http_get(f"{base}/")
        assert status == 200 and b"<html" in page.lower()
        info = json.loads(http_get(f"{base}/info")[2])
        assert info["name"] == "photos.zarr" and info["records"] == N
        listing = json.loads(http_get(f"{base}/images?offset=0&limit=120&details=true")[2])
        assert listing["keys"] == [f"img{i}.png" for i in range(N)]
        for key in listing["keys"]:  # what each tile of the grid asks for
            status, headers, body = http_get(
                f"{base}/images/{key}?tier=preview&width=256&format=webp")
            assert status == 200 and headers["content-type"] == "image/webp", (status, body)
            assert headers["x-cdc-source"] == "decoded"
            img = Image.open(io.BytesIO(body))
            assert img.format == "WEBP" and img.size == (SIZE[1], SIZE[0])
            assert pixels(body).std() > 0  # not a blank tile
        from tests.browser import find_browser

        browser = find_browser()
        if not isinstance(browser, str):  # the page itself, in headless Chromium
            from tests.browser import headless_chromium, open_gallery

            d = headless_chromium(*browser, 1000, 700)
            try:
                open_gallery(d, base, thumbs=N)
            finally:
                d.quit()


def test_verify_clean_then_corrupted_object(ref_env, reference, s3_server):
    url = reference.url
    r = cdc(ref_env, "verify", url)
    assert r.returncode == 0 and "verdict: clean" in r.stdout, r.stdout + r.stderr
    fs = s3_server.filesystem()
    obj = url.removeprefix("s3://") + "/bitstream/c/0/0"
    original = fs.cat_file(obj)
    info = reference.info("img1.png")
    damaged = bytearray(original)
    damaged[_record_offset(url, s3_server, "img1.png") + info.nbytes // 2] ^= 0x40
    fs.pipe_file(obj, bytes(damaged))
    try:
        r = cdc(ref_env, "verify", url)
        assert r.returncode == 3, r.stdout + r.stderr
        assert "verdict: 1 problem(s)" in r.stdout and "bad payloads: 1" in r.stdout, r.stdout
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "img1.png" in errors[0] and "Traceback" not in r.stderr
    finally:
        fs.pipe_file(obj, original)


def _record_offset(url: str, server: Any, key: str) -> int:
    """Where ``key``'s bytes start in its shard's payload (the stored ``offset`` row)."""
    import zarr

    arch = Archive.open(url, storage_options=server.storage_options)
    info = arch.info(key)
    g = zarr.open_group(url, mode="r", storage_options=server.storage_options)
    return int(g["offset"][info.shard * arch.shard_size + info.row])


def test_get_bpp_reads_only_the_prefix(s3_server, tmp_path):
    """A DiffC record on S3; ``cdc get --bpp`` through a counting proxy fetches the index
    and the prefix, never the rest of the record."""
    from pipeline.archive import Reader, encode_shard, open_or_create, plan_inputs, plan_shards
    from tests.test_diffc import make_diffc_weights
    from zoo import codec_from_bytes

    weights = tmp_path / "diffc-test.pt"
    weights.write_bytes(make_diffc_weights(0))
    dc = codec_from_bytes(weights.read_bytes(), str(weights))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(48, 64, seed=40 + i)).save(src / f"d{i}.png")
    url = f"s3://{s3_server.new_bucket('cdc-diffc')}/d.zarr"
    so = s3_server.storage_options
    arch, _ = open_or_create(url, dc, shard_size=8, storage_options=so)
    items, _ = plan_inputs(str(src))
    list(encode_shard(dc, arch, plan_shards(items, set(), set(), 8)[0]))
    arch = Archive.open(url, storage_options=so)
    full = arch["d1.png"].data
    bpp = 0.5
    n = dc.prefix_length(full, bpp=bpp)
    assert 0 < n < len(full) // 2, (n, len(full))
    out = tmp_path / "d1.png"
    with CountingProxy(s3_server.endpoint) as proxy:
        r = cdc(user_env(s3_server, proxy.endpoint), "get", url, "d1.png", str(out), "--bpp",
                str(bpp), "--model", str(weights), "--no-cache")
        reqs = proxy.snapshot()
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"prefix within {bpp:g} bpp" in r.stdout
    payload = [q for q in reqs if q.path.endswith("/bitstream/c/0/0") and q.method == "GET"]
    assert payload and all(q.range for q in payload), payload  # ranged, never the object
    data_reads = [q for q in payload if not q.range.startswith("bytes=-")]  # not the index
    fetched = sum(q.body_bytes for q in data_reads)
    assert 0 < fetched <= max(n, dc.plan_read_bytes) < len(full), (fetched, n, len(full))
    want = Reader(arch, dc, cache=None, archive_cache=False).get("d1.png", "standard", bpp=bpp)
    assert_same_image(out, want.data)


# -- the store's problems: one line each, exit 1, nothing written -------------------------
def test_store_problems_are_one_line_and_write_nothing(s3_server, weights_file, tmp_path):
    fs = s3_server.filesystem()
    ro = s3_server.new_bucket("cdc-ro")
    fs.pipe(f"{ro}/keep/data.bin", b"existing data")
    _deny_writes(fs, ro)
    missing = f"cdc-missing-{uuid.uuid4().hex[:8]}"
    ok_bucket = s3_server.new_bucket("cdc-ok")
    dead = f"http://127.0.0.1:{free_port()}"
    cases = {
        "no-bucket": (user_env(s3_server), f"s3://{missing}/a.zarr",
                      f"the bucket '{missing}' does not exist"),
        "credentials": (user_env(s3_server, AWS_SECRET_ACCESS_KEY="wrong-secret"),
                        f"s3://{ok_bucket}/a.zarr", "the server refused the credentials"),
        "unreachable": (user_env(s3_server, dead), f"s3://{ok_bucket}/a.zarr",
                        f"cannot connect to the endpoint {dead}"),
        "read-only": (user_env(s3_server), f"s3://{ro}/a.zarr",
                      "access denied when writing (a read-only bucket"),
    }
    src = str(ROOT / "samples")
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "archive", src, url, "--model", weights_file,
             "--num-cpus", "1", "--no-progress"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (env, url, _) in cases.items()
    }
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        env, url, phrase = cases[name]
        assert p.returncode == 1, (name, out, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {url}: "), (name, err)
        assert phrase in lines[0], (name, lines[0])
        assert "Traceback" not in err + out and "botocore" not in err, (name, err)
    assert not fs.exists(missing)
    fs.invalidate_cache()
    assert sorted(fs.find(ok_bucket)) == []
    assert sorted(fs.find(ro)) == [f"{ro}/keep/data.bin"]
    assert fs.cat(f"{ro}/keep/data.bin") == b"existing data"
    # cdc get / verify with refused credentials: the same one line
    r = cdc(user_env(s3_server, AWS_ACCESS_KEY_ID="nobody"), "verify", f"s3://{ok_bucket}/a.zarr")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "refused the credentials (InvalidAccessKeyId)" in r.stderr


def _deny_writes(fs: Any, bucket: str) -> None:
    """A read-only bucket: a bucket policy denying puts and deletes to everyone."""
    from fsspec.asyn import sync

    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": ["s3:PutObject", "s3:DeleteObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/*"]}]}
    sync(fs.loop, fs._call_s3, "put_bucket_policy", Bucket=bucket, Policy=json.dumps(policy))


# -- "absent" by type, on every kind of store (in-process) --------------------------------
@pytest.fixture(params=["path", "file", "memory", "s3"])
def empty_url(request, tmp_path) -> tuple[str, dict | None]:
    kind = request.param
    if kind == "path":
        (tmp_path / "empty").mkdir()
        return str(tmp_path / "empty"), None
    if kind == "file":
        return f"file://{tmp_path}/new.zarr", None
    if kind == "memory":
        return f"memory://cdc-{uuid.uuid4().hex}/x.zarr", None
    server = request.getfixturevalue("s3_server")
    return f"s3://{server.new_bucket()}/x.zarr", server.storage_options


def test_open_or_create_on_an_empty_prefix_and_never_on_other_data(empty_url, codec):
    from pipeline.archive import open_or_create

    url, so = empty_url
    with pytest.raises(ArchiveNotFoundError):
        Archive.open(url, storage_options=so)
    arch, created = open_or_create(url, codec, shard_size=4, storage_options=so)
    assert created and len(arch) == 0 and arch.codec_id == "cdc"
    again, created = open_or_create(url, codec, storage_options=so)
    assert not created and again.weights_digest == arch.weights_digest
    # a URL that holds other data: refused, untouched
    other = url.rstrip("/") + "-other"
    import fsspec

    fs, path = fsspec.core.url_to_fs(other, **(so or {}))
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/photo.jpg", b"not an archive")
    with pytest.raises(NotAnArchiveError, match="no zarr.json there; not a cdc archive") as e:
        open_or_create(other, codec, storage_options=so)
    assert not isinstance(e.value, ArchiveNotFoundError)
    with pytest.raises(ArchiveExistsError):
        Archive.create(other, codec_id="cdc", model_id="m", weights_digest="sha256:00",
                       storage_options=so)
    fs.invalidate_cache()
    assert [p.rsplit("/", 1)[-1] for p in fs.find(path)] == ["photo.jpg"]
    assert fs.cat_file(f"{path}/photo.jpg") == b"not an archive"
