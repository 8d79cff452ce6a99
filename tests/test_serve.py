"""`cdc serve`'s Ray Serve app, over real HTTP on 127.0.0.1 (one Ray + Serve per module):
listing, images by tier and format, caching, ETags and 304s, server-side resizing, the
error codes (with no server paths), batching of concurrent requests, and bounded queues
under overload. The gallery page and a real browser: tests/test_gallery.py."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdc import CDCCodec
from jobs.cluster import quiet_env, use_loopback
from pipeline.archive.tier_settings import DEFAULT_TIERS, merge_tiers
from storage import Archive
from tests.serve_helpers import free_port, generated_archive
from tests.serve_helpers import http_get as _get

N = 12
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's pydantic use


@pytest.fixture(scope="module")
def archive_url(tmp_path_factory, codec: CDCCodec) -> str:
    root = tmp_path_factory.mktemp("serve")
    return generated_archive(root / "src", str(root / "a.zarr"), codec, N, shard_size=16,
                             tiers=merge_tiers(DEFAULT_TIERS, ["quick:steps=2,gamma=0"]))


@pytest.fixture(scope="module")
def server(archive_url: str, weights_file: str, tmp_path_factory):
    quiet_env()
    use_loopback()
    import ray
    from ray import serve

    from jobs.serve import ServeOptions, deploy, start_http

    # address="local": a Ray of its own even while another one runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 1024 * 1024, _node_ip_address="127.0.0.1")
    port = free_port()
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
def test_error_codes(server: str, archive_url: str):
    """Every error is one JSON line that names no server path (not the archive's, not the
    source file's of a record that failed), and is not cached."""
    cases = {
        "/images/nope.png": 404,
        "/images/img000.png?tier=ultra": 400,
        "/images/img000.png?format=gif": 400,
        "/images/img000.png?tier=quick&steps=0": 400,
        "/images/a%01b.png": 400,  # a malformed key (a control character)
        "/images/img000.png?steps=abc": 422,  # FastAPI's validation error
        "/images/img000.png?width=3": 422,
        "/images/zz-broken.png": 422,  # the image failed when it was archived
    }
    root = str(Path(archive_url).parent)
    details = {}
    for path, code in cases.items():
        status, headers, body = _get(server + path)
        assert status == code, (path, status, body)
        detail = json.loads(body)["detail"]
        assert isinstance(detail, str) and "\n" not in detail, (path, detail)
        assert root not in body.decode() and "/tmp" not in body.decode(), (path, detail)
        assert headers["cache-control"] == "no-store", path
        details[path] = detail
    assert details["/images/img000.png?tier=ultra"].startswith("unknown tier 'ultra'")
    assert details["/images/zz-broken.png"] == (
        "zz-broken.png: image failed when archived: not an image file (unrecognised format)")
    assert details["/images/img000.png?steps=abc"].startswith("steps: ")
    assert "control character" in details["/images/a%01b.png"]
    _, _, body = _get(f"{server}/healthz")
    assert json.loads(body)["archive"] == "a.zarr"


@pytest.mark.timeout(60)
def test_etag_304_before_decoding_and_server_side_width(server: str):
    url = f"{server}/images/img010.png?tier=quick"
    status, h, body = _get(url)
    assert status == 200, body
    etag = h["etag"]
    assert etag.startswith('"') and etag.endswith('"')  # strong
    assert "immutable" in h["cache-control"] and "max-age=" in h["cache-control"]
    assert (h["x-cdc-tier"], h["x-cdc-steps"], float(h["x-cdc-gamma"])) == ("quick", "2", 0.0)
    read = int(h["x-cdc-bytes-read"])
    assert read == int(h["x-cdc-record-bytes"]) > 0  # CDC reads the whole stream
    assert float(h["x-cdc-bpp"]) == pytest.approx(8 * read / (64 * 48), rel=1e-3)
    assert float(h["x-cdc-decode-ms"]) > 0 and h["x-cdc-image-size"] == "64x48"

    def served() -> dict:
        return json.loads(_get(f"{server}/healthz")[2])["served"]

    before = served()
    for tags in (etag, f'"other", W/{etag}', "*"):
        status, h2, empty = _get(url, headers={"If-None-Match": tags})
        assert (status, empty, h2["etag"]) == (304, b"", etag), tags
        assert "immutable" in h2["cache-control"]
    after = served()
    assert after["not-modified"] == before["not-modified"] + 3
    assert (after["decoded"], after["cache"]) == (before["decoded"], before["cache"])
    assert _get(url, headers={"If-None-Match": '"stale"'})[0] == 200
    assert _get(f"{url}&format=webp")[1]["etag"] != etag  # format, settings: other tags
    assert _get(f"{url}&seed=3&gamma=0.5")[1]["etag"] != etag

    status, h3, small = _get(f"{url}&width=32")
    assert status == 200 and Image.open(io.BytesIO(small)).size == (32, 24)
    assert h3["etag"] != etag and h3["x-cdc-bytes-read"] == str(read)
    status, h4, again = _get(f"{url}&width=32")
    assert (status, h4["x-cdc-source"], again, h4["etag"]) == (200, "cache", small, h3["etag"])
    status, h5, big = _get(f"{url}&width=1000")  # never enlarged: the image itself
    assert status == 200 and big == body and h5["etag"] == etag


@pytest.mark.timeout(60)
def test_listing_filter_details_and_info(server: str):
    listing = json.loads(_get(f"{server}/images?q=IMG01&details=true")[2])
    assert listing["keys"] == ["img010.png", "img011.png"] and listing["total"] == 2
    assert listing["items"][0] == {"key": "img010.png", "ok": True, "width": 64, "height": 48,
                                   "bytes": listing["items"][0]["bytes"]}
    dated = json.loads(_get(f"{server}/images?q=img001&details=true")[2])["items"]
    assert dated == [{"key": "img001.png", "ok": True, "width": 64, "height": 48,
                      "bytes": dated[0]["bytes"], "taken": "2021-07-04T18:22:10+02:00"}]
    summer = json.loads(_get(f"{server}/images?taken_from=2021-06&taken_to=2021-07")[2])
    assert summer["keys"] == ["img001.png"] and summer["total"] == 1
    assert json.loads(_get(f"{server}/images?taken_to=2020")[2])["keys"] == []
    status, _, body = _get(f"{server}/images?taken_from=summer")
    assert status == 400 and b"taken_from 'summer': expected YYYY" in body
    broken = json.loads(_get(f"{server}/images?q=broken&details=true")[2])["items"]
    assert broken == [{"key": "zz-broken.png", "ok": False, "width": 0, "height": 0,
                       "bytes": 0, "error": "not an image file (unrecognised format)"}]
    info = json.loads(_get(f"{server}/info")[2])
    assert (info["name"], info["records"], info["failed"]) == ("a.zarr", N + 1, 1)
    assert info["order"] == ["preview", "quick", "standard", "high"]
    assert list(info["tiers"]) == info["order"] and info["preview_tier"] == "preview"
    assert info["default_tier"] == "quick" and info["codec"] == "cdc"


@pytest.mark.timeout(60)
def test_gallery_page_and_its_files(server: str):
    """GET / is the gallery (tests/test_gallery.py drives it in a browser): plain files
    shipped with the package, nothing fetched from elsewhere, links relative to the
    route the page is served under."""
    status, h, body = _get(f"{server}/")
    page = body.decode()
    assert status == 200 and h["content-type"].startswith("text/html"), page
    assert '<base href="/">' in page and 'src="gallery/app.js"' in page
    assert '<base href="/tight/">' in _get(f"{server}/tight/")[2].decode()
    for name, media in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, h, body = _get(f"{server}/gallery/{name}")
        assert status == 200 and h["content-type"].startswith(media) and body
        assert b"http://" not in body and b"https://" not in body  # no CDN, no fonts
        assert _get(f"{server}/gallery/{name}", headers={"If-None-Match": h["etag"]})[0] == 304
    assert b"http://" not in page.encode() and b"https://" not in page.encode()
    assert _get(f"{server}/gallery/index.html")[0] == 404
    assert _get(f"{server}/gallery/serve.py")[0] == 404


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
