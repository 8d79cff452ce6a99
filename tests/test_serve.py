"""`cdc serve`'s Ray Serve app, over real HTTP on 127.0.0.1 (one Ray + Serve per module):
listing, images by tier and format, caching, batching of concurrent requests, the error
codes, and bounded queues under overload."""

from __future__ import annotations

import io
import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from cdc import CDCCodec
from jobs.cluster import quiet_env, use_loopback
from pipeline.archive import encode_shard, open_or_create, plan_inputs, plan_shards
from pipeline.tiers import DEFAULT_TIERS, merge_tiers
from storage import Archive
from tests.conftest import smooth_image

N = 12
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's pydantic use


def _get(url: str, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def archive_url(tmp_path_factory, codec: CDCCodec) -> str:
    root = tmp_path_factory.mktemp("serve")
    for i in range(N):
        Image.fromarray(smooth_image(48, 64, i)).save(root / f"img{i:03d}.png")
    (root / "zz-broken.png").write_bytes(b"not a png")
    items, _ = plan_inputs(str(root))
    url = str(root / "a.zarr")
    arch, _ = open_or_create(url, codec, shard_size=16,
                             tiers=merge_tiers(DEFAULT_TIERS, ["quick:steps=2,gamma=0"]))
    for plan in plan_shards(items, set(), set(), 16):
        list(encode_shard(codec, arch, plan))
    return url


@pytest.fixture(scope="module")
def server(archive_url: str, weights_file: str, tmp_path_factory):
    quiet_env()
    use_loopback()
    import ray
    from ray import serve

    from jobs.serve import ServeOptions, deploy, start_http

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 1024 * 1024, _node_ip_address="127.0.0.1")
    port = _free_port()
    try:
        start_http("127.0.0.1", port)
        cache = tmp_path_factory.mktemp("cache")
        deploy(archive_url, model=weights_file, name="main", route_prefix="/",
               opts=ServeOptions(default_tier="quick", batch_wait_s=0.25, num_cpus=0.5,
                                 cache_dir=str(cache / "main")))
        # a deliberately tiny deployment for the overload test: 2 requests inside, 1 queued
        # in Serve (then 503), 1 decode waiting (then 429). (Sharing one deployment with the
        # other tests does not work: Serve counts requests waiting for a replica as queued,
        # so a burst of 6 already gets 503s from a queue small enough to overflow.)
        deploy(archive_url, model=weights_file, name="tight", route_prefix="/tight",
               opts=ServeOptions(default_tier="quick", max_ongoing=2, max_queued=1,
                                 max_pending=1, batch_wait_s=0.3, num_cpus=0.5,
                                 cache_dir=str(cache / "tight")))
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.timeout(150)
def test_healthz_and_listing(server: str, archive_url: str):
    status, _, body = _get(f"{server}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = _get(f"{server}/images")
    listing = json.loads(body)
    assert status == 200 and listing["keys"] == Archive.open(archive_url).keys()
    assert listing["total"] == N + 1
    _, _, body = _get(f"{server}/images?prefix=img00&offset=2&limit=3")
    assert json.loads(body)["keys"] == ["img002.png", "img003.png", "img004.png"]
    _, _, body = _get(f"{server}/tiers")
    assert json.loads(body)["tiers"]["quick"] == {"steps": 2, "gamma": 0.0, "seed": 0}


@pytest.mark.timeout(60)
def test_image_by_tier_and_format_then_cached(server: str, archive_url: str, codec: CDCCodec):
    status, headers, body = _get(f"{server}/images/img000.png?tier=quick")
    assert status == 200, body
    assert headers["content-type"] == "image/png" and headers["x-cdc-source"] == "decoded"
    got = Image.open(io.BytesIO(body))
    ref = codec.decompress(Archive.open(archive_url)["img000.png"].data, steps=2, gamma=0.0, seed=0)
    assert got.size == (64, 48) and np.array_equal(np.asarray(got), np.asarray(ref))
    status, headers, again = _get(f"{server}/images/img000.png?tier=quick")
    assert status == 200 and headers["x-cdc-source"] == "cache" and again == body
    status, headers, webp = _get(f"{server}/images/img000.png?format=webp")  # default tier
    assert status == 200 and headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(webp)).format == "WEBP"


@pytest.mark.timeout(60)
def test_error_codes(server: str):
    cases = {
        "/images/nope.png": 404,
        "/images/img000.png?tier=ultra": 400,
        "/images/img000.png?format=gif": 400,
        "/images/img000.png?tier=quick&steps=0": 400,
        "/images/img000.png?steps=abc": 422,  # FastAPI's validation error
        "/images/zz-broken.png": 422,  # the image failed when it was archived
    }
    for path, code in cases.items():
        status, _, body = _get(server + path)
        assert status == code, (path, status, body)
    status, _, body = _get(f"{server}/images/img000.png?tier=ultra")
    assert "unknown tier 'ultra'" in json.loads(body)["detail"]


@pytest.mark.timeout(90)
def test_concurrent_requests_share_a_decode_batch(server: str):
    keys = [f"img{i:03d}.png" for i in range(1, 7)]
    with ThreadPoolExecutor(len(keys)) as pool:
        results = list(pool.map(lambda k: _get(f"{server}/images/{k}?tier=quick"), keys))
    assert [r[0] for r in results] == [200] * len(keys)
    assert all(Image.open(io.BytesIO(r[2])).size == (64, 48) for r in results)
    batches = [int(r[1]["x-cdc-batch-size"]) for r in results]
    assert max(batches) > 1, batches  # same tier, same time -> one decompress_batch
    _, _, body = _get(f"{server}/healthz")
    assert json.loads(body)["batches"]["max"] > 1


@pytest.mark.timeout(90)
def test_overload_is_refused_not_queued(server: str):
    """16 concurrent slow decodes against max_ongoing=2, max_queued=1, max_pending=1: the
    excess is refused at once (429 from the replica, 503 from Serve's queue)."""
    urls = [f"{server}/tight/images/img{i % N:03d}.png?steps=12&seed={i}" for i in range(16)]
    with ThreadPoolExecutor(len(urls)) as pool:
        statuses = [r[0] for r in pool.map(_get, urls)]
    print("overload statuses:", sorted(statuses))
    assert set(statuses) <= {200, 429, 503}, statuses
    assert 200 in statuses and statuses.count(200) < len(urls), statuses
    assert 503 in statuses or 429 in statuses
    status, _, body = _get(f"{server}/tight/healthz")
    assert status == 200  # and it recovers
    health = json.loads(body)
    assert health["pending_decodes"] == 0
    assert health["served"]["rejected"] == statuses.count(429)
