"""Lazy reads and crash safety of the `cdc` commands on a real S3 server (Ceph RGW).

    .venv/bin/python bench/bench_s3.py                          # all three parts
    .venv/bin/python bench/bench_s3.py --parts get --records 1000
    CDC_S3_ENDPOINT=http://127.0.0.1:7480 .venv/bin/python bench/bench_s3.py --parts gallery

Uses CDC_S3_ENDPOINT (+ CDC_S3_ACCESS_KEY / CDC_S3_SECRET_KEY) when set, else starts
scripts/s3-server on free loopback ports (bench/bench_storage.py's ``start_s3``). The
commands run as a user runs them: ``cdc`` in a subprocess, the credentials only in
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL, the endpoint pointing at a
counting pass-through proxy (tests/s3_proxy.py) that logs every request and the bytes of
every answer, so nothing in the code under test is instrumented.

Parts:

* ``get``: one ``cdc get KEY --tier preview`` from a ``--records`` archive (default 1,000,
  shards of 256). Requests and bytes fetched, by kind, against the record's size. Target:
  the record, its index entry and the metadata, under 2 requests beyond the first open
  (the root ``zarr.json``), bytes <= 1.1x the record.
* ``gallery``: ``cdc serve`` on a ``--gallery-records`` archive (default 10,000): time from
  the server answering ``/healthz`` to the gallery's first thumbnail (the page, ``/info``,
  the first ``/images?limit=120&details=true`` page, then the first tile's
  ``/images/{key}?tier=preview&width=256&format=webp``), and from starting the process.
* ``thumb``: the same first thumbnail without Ray Serve, in this process (open, first
  page of keys, first preview decoded and resized): for machines too loaded for Serve.
* ``chaos``: bench/bench_chaos.py's kill (an encoder SIGKILLed ``--kill-every`` s after it
  starts working, again after each restart) on an archive job writing to S3 (local PNGs,
  ``--chaos-images`` of 64x64, shards of 64, one actor); a clean job (local archive) is the
  reference. Reported: images lost (missing or payload different: target 0), and what a
  reader sees right after the killed run, before any rerun: ``Archive.verify()`` of every
  visible shard, and the payload objects left by killed attempts (orphans) that no reader
  sees (target: none visible).

How the big archives are written cheaply: ``--distinct`` (default 8) generated 64x64
photos (bench/streams.py) are encoded once with ``--model`` (default ``cdc-small``, the
shipped pixel CDC model: small, decodes a 64x64 preview in well under a second on a CPU),
and the archive is filled through the storage API (``Archive.create`` with the model's
identity and tiers, then ``write_shard`` per shard of 256) with record ``i`` =
stream ``i % distinct`` under key ``img{i:05d}.png``: every record is a real, decodable
stream of the archive's model; no image is encoded twice.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_storage import start_s3  # noqa: E402
from tests.s3_proxy import CountingProxy, Request  # noqa: E402


def user_env(cfg: dict[str, str], endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDC_S3_"))}
    env.update(AWS_ACCESS_KEY_ID=cfg["CDC_S3_ACCESS_KEY"],
               AWS_SECRET_ACCESS_KEY=cfg["CDC_S3_SECRET_KEY"], AWS_ENDPOINT_URL=endpoint,
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def s3_options(cfg: dict[str, str]) -> dict[str, Any]:
    return {"key": cfg["CDC_S3_ACCESS_KEY"], "secret": cfg["CDC_S3_SECRET_KEY"],
            "client_kwargs": {"endpoint_url": cfg["CDC_S3_ENDPOINT"]}}


def new_bucket(cfg: dict[str, str], prefix: str) -> str:
    import s3fs

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(**s3_options(cfg)).mkdir(name)
    return name


def fill_archive(url: str, so: dict[str, Any], model: str, n: int, distinct: int,
                 shard_size: int = 256) -> dict[str, Any]:
    """``n`` records of real streams (``distinct`` images encoded once), see the docstring."""
    from bench.streams import smooth_image
    from pipeline.codec_adapter import codec_config, full_codec, weights_digest
    from pipeline.tier_policy import tiers_for
    from pipeline.tiers import check_tiers
    from storage import Archive, Record
    from zoo import load_codec

    codec = full_codec(load_codec(model))
    streams = [codec.compress(smooth_image(64, 64, s)) for s in range(distinct)]
    t = time.perf_counter()
    arch = Archive.create(url, codec_id=codec.codec_id, model_id=codec.model_id,
                          weights_digest=weights_digest(codec), codec_config=codec_config(codec),
                          tiers=check_tiers(tiers_for(codec, None)), shard_size=shard_size,
                          storage_options=so)
    for k in range(-(-n // shard_size)):
        rows = range(k * shard_size, min(n, (k + 1) * shard_size))
        arch.write_shard(k, [Record(f"img{i:05d}.png", streams[i % distinct], height=64,
                                    width=64) for i in rows])
    return {"write_s": time.perf_counter() - t,
            "stream_bytes": sorted({len(s) for s in streams})}


def kind(r: Request, archive_path: str) -> str:
    p = r.path[len(archive_path):].lstrip("/") if r.path.startswith(archive_path) else r.path
    if "list-type" in r.query:
        return "list " + (next((q.split("=", 1)[1] for q in r.query.split("&")
                                if q.startswith("prefix=")), "") or "/")
    if p.startswith("bitstream/c/"):
        return "payload index" if (r.range or "").startswith("bytes=-") else "payload range"
    if p.startswith(("manifest/", "claims/", "cache/")):
        return p.split("/", 1)[0] + "/*"
    if "/c/" in p:
        return "row chunk " + p.split("/", 1)[0]
    return p or "?"


def part_get(cfg: dict[str, str], args: argparse.Namespace, res: dict[str, Any]) -> None:
    from storage import Archive

    so = s3_options(cfg)
    bucket = new_bucket(cfg, "bench-get")
    url = f"s3://{bucket}/get.zarr"
    info = fill_archive(url, so, args.model, args.records, args.distinct)
    key = f"img{args.records // 2:05d}.png"
    rec_bytes = Archive.open(url, storage_options=so).info(key).nbytes
    out = Path(tempfile.mkdtemp(prefix="cdc-bench-s3-")) / "out.png"
    with CountingProxy(cfg["CDC_S3_ENDPOINT"]) as proxy:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "jobs.cli", "get", url, key, str(out),
                            "--tier", "preview", "--no-cache"], env=user_env(cfg, proxy.endpoint),
                           cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
        wall = time.perf_counter() - t
        reqs = proxy.snapshot()
    if r.returncode != 0:
        raise SystemExit(f"cdc get failed: {r.stderr}")
    path = f"/{bucket}/get.zarr"
    kinds = Counter(kind(q, path) for q in reqs)
    bytes_by = Counter()
    for q in reqs:
        bytes_by[kind(q, path)] += q.body_bytes
    open_reqs = [q for q in reqs if q.path == f"{path}/zarr.json"][:1]
    total = sum(q.body_bytes for q in reqs)
    res["get"] = {
        "records": args.records, "key": key, "record_bytes": rec_bytes, **info,
        "requests": len(reqs), "requests_beyond_open": len(reqs) - len(open_reqs),
        "bytes": total, "bytes_beyond_open": total - sum(q.body_bytes for q in open_reqs),
        "bytes_over_record": total / rec_bytes, "by_kind": dict(kinds),
        "bytes_by_kind": dict(bytes_by), "wall_s": wall, "stdout": r.stdout.strip()}
    g = res["get"]
    print(f"get: {args.records} records, record {rec_bytes} B; {g['requests']} requests "
          f"({g['requests_beyond_open']} beyond the first open), {total} B fetched = "
          f"{g['bytes_over_record']:.1f}x the record; {wall:.1f} s", flush=True)
    for k, v in sorted(kinds.items()):
        print(f"   {v:4d} x {k:<28} {bytes_by[k]:>9} B")


def part_gallery(cfg: dict[str, str], args: argparse.Namespace, res: dict[str, Any]) -> None:
    from tests.serve_helpers import CdcServe, http_get

    so = s3_options(cfg)
    bucket = new_bucket(cfg, "bench-gallery")
    url = f"s3://{bucket}/gallery.zarr"
    info = fill_archive(url, so, args.model, args.gallery_records, args.distinct)
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-s3-"))
    saved = dict(os.environ)
    with CountingProxy(cfg["CDC_S3_ENDPOINT"]) as proxy:
        os.environ.clear()
        os.environ.update(user_env(cfg, proxy.endpoint))
        for k in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S",
                  "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
            os.environ[k] = "60"  # Serve's 5 s/10 s kill its proxy on a loaded machine
        try:
            t0 = time.perf_counter()
            with CdcServe(url, cache_dir=str(work / "cache"), log=work / "serve.log",
                          start_timeout_s=600) as base:
                t_ready = time.perf_counter()
                n_start = len(proxy.snapshot())
                assert http_get(f"{base}/")[0] == 200
                meta = json.loads(http_get(f"{base}/info", timeout=600)[2])
                page = json.loads(http_get(f"{base}/images?offset=0&limit=120&q=&details=true",
                                           timeout=600)[2])
                t_list = time.perf_counter()
                first = page["keys"][0]
                status, headers, body = http_get(
                    f"{base}/images/{first}?tier=preview&width=256&format=webp", timeout=600)
                t_thumb = time.perf_counter()
                assert status == 200 and body, (status, body[:200])
                n_thumb = len(proxy.snapshot())
                from PIL import Image

                assert Image.open(io.BytesIO(body)).size == (64, 64)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    res["gallery"] = {
        "records": args.gallery_records, **info, "info_records": meta["records"],
        "start_to_ready_s": t_ready - t0, "ready_to_first_page_s": t_list - t_ready,
        "ready_to_first_thumbnail_s": t_thumb - t_ready, "start_to_first_thumbnail_s": t_thumb - t0,
        "requests_at_start": n_start, "requests_for_first_thumbnail": n_thumb - n_start,
        "decode_ms": headers.get("x-cdc-decode-ms"), "source": headers.get("x-cdc-source")}
    g = res["gallery"]
    print(f"gallery: {args.gallery_records} records; serve answered /healthz after "
          f"{g['start_to_ready_s']:.1f} s; then first page of keys "
          f"{g['ready_to_first_page_s']:.2f} s, "
          f"first thumbnail {g['ready_to_first_thumbnail_s']:.2f} s after ready "
          f"({g['start_to_first_thumbnail_s']:.1f} s from process start; "
          f"{g['requests_for_first_thumbnail']} S3 requests after ready; decode "
          f"{g['decode_ms']} ms)", flush=True)
    shutil.rmtree(work, ignore_errors=True)


def part_thumb(cfg: dict[str, str], args: argparse.Namespace, res: dict[str, Any]) -> None:
    """What ``cdc serve`` does for the gallery's first thumbnail, in this process, without
    Ray Serve (for machines too loaded for Serve's 5 s proxy health check): open the
    archive, the first page of 120 keys with details, then the first key's preview decoded
    and resized to a 256 px WebP, through the proxy."""
    from PIL import Image

    from pipeline.archive import Reader
    from storage import Archive
    from zoo import load_codec

    so = s3_options(cfg)
    bucket = new_bucket(cfg, "bench-thumb")
    url = f"s3://{bucket}/gallery.zarr"
    info = fill_archive(url, so, args.model, args.gallery_records, args.distinct)
    codec = load_codec(args.model)
    with CountingProxy(cfg["CDC_S3_ENDPOINT"]) as proxy:
        pso = {**so, "client_kwargs": {"endpoint_url": proxy.endpoint}}
        t0 = time.perf_counter()
        arch = Archive.open(url, storage_options=pso, read_only=True)
        t_open = time.perf_counter()
        keys = arch.keys()
        page = [arch.info(k) for k in keys[:120]]
        t_page = time.perf_counter()
        n_page = len(proxy.snapshot())
        rec = Reader(arch, codec, cache=None).get(keys[0], "preview")
        img = Image.open(io.BytesIO(rec.data))
        img.thumbnail((256, 256))
        buf = io.BytesIO()
        img.save(buf, "WEBP")
        t_thumb = time.perf_counter()
        n_all = len(proxy.snapshot())
    res["thumb"] = {"records": args.gallery_records, **info, "keys": len(keys),
                    "page_items": len(page), "open_s": t_open - t0,
                    "first_page_s": t_page - t0, "first_thumbnail_s": t_thumb - t0,
                    "requests_to_first_page": n_page, "requests_to_first_thumbnail": n_all}
    g = res["thumb"]
    print(f"first thumbnail (in process, no Serve): {args.gallery_records} records; open "
          f"{g['open_s']:.2f} s, first page of 120 keys {g['first_page_s']:.2f} s "
          f"({n_page} requests), first thumbnail {g['first_thumbnail_s']:.2f} s "
          f"({n_all} requests)", flush=True)


def part_chaos(cfg: dict[str, str], args: argparse.Namespace, res: dict[str, Any]) -> None:
    from bench.bench_chaos import Killer, compare, digests, make_images, run_job
    from jobs.cluster import quiet_env, use_loopback

    os.environ.update(user_env(cfg, cfg["CDC_S3_ENDPOINT"]))  # the actors inherit it
    quiet_env()
    use_loopback()
    import ray

    from storage import Archive

    work = Path(tempfile.mkdtemp(prefix="cdc-bench-s3-chaos-"))
    src = work / "images"
    make_images(src, args.chaos_images, 64, 64)
    job = {"actors": 1, "shard_size": 64, "batch_size": 8}
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024 * 1024, _node_ip_address="127.0.0.1")
    try:
        clean_url = str(work / "clean.zarr")
        clean = run_job(src, clean_url, args.model, **job)
        assert clean["complete"], clean["failures"][:3]
        ref = digests(clean_url)
        url = f"s3://{new_bucket(cfg, 'bench-chaos')}/chaos.zarr"
        killer = Killer(args.kill_every).start()
        try:
            first = run_job(src, url, args.model, on_event=killer.on_event, **job)
        finally:
            killer.stop()
        # what a reader sees right after the killed run, before any rerun
        arch = Archive.open(url)
        visible = arch.completed_shards()
        verified = arch.verify()
        import s3fs

        fs = s3fs.S3FileSystem(**s3_options(cfg))
        payloads = {int(p.split("/")[-2]) for p in fs.find(url[5:] + "/bitstream/c")}
        orphans = sorted(payloads - set(visible))
        runs = [first]
        while not runs[-1]["complete"] and len(runs) <= 3:
            runs.append(run_job(src, url, args.model, **job))
        cmp = compare(ref, digests(url), args.chaos_images)
    finally:
        ray.shutdown()
    res["chaos"] = {
        "images": args.chaos_images, "kill_every_s": args.kill_every, "kills": len(killer.kills),
        "mid_shard_kills": killer.mid_shard, "retries": sum(r["shards"]["retries"] for r in runs),
        "reruns": len(runs) - 1, "complete": runs[-1]["complete"],
        "seconds": sum(r["wall_s"] for r in runs), "clean_local_seconds": clean["wall_s"],
        "after_killed_run": {"visible_shards": len(visible), "verified_records":
                             verified.get("records") if isinstance(verified, dict) else None,
                             "orphan_payload_objects_invisible": orphans},
        **cmp}
    c = res["chaos"]
    print(f"chaos on S3: {c['images']} images, {c['kills']} encoder kills "
          f"({c['mid_shard_kills']} mid-shard), {c['retries']} shard retries, {c['reruns']} "
          f"rerun(s); after the killed run a reader sees {len(visible)} complete shards, all "
          f"verified ({c['after_killed_run']['verified_records']} records), and none of the "
          f"{len(orphans)} payload objects of unfinished attempts; images lost: {c['lost']} "
          f"(missing {c['missing']}, differ {c['differ']}); {c['seconds']:.0f} s "
          f"(clean local job {c['clean_local_seconds']:.0f} s)", flush=True)
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="get,gallery,chaos")
    ap.add_argument("--model", default="cdc-small")
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--gallery-records", type=int, default=10_000)
    ap.add_argument("--distinct", type=int, default=8)
    ap.add_argument("--chaos-images", type=int, default=512)
    ap.add_argument("--kill-every", type=float, default=5.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg, stop = start_s3()
    res: dict[str, Any] = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
                           "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    try:
        for part in args.parts.split(","):
            {"get": part_get, "gallery": part_gallery, "thumb": part_thumb,
             "chaos": part_chaos}[part](cfg, args, res)
    finally:
        stop()
    res["load_avg_after"] = os.getloadavg()
    print(f"load average before {res['load_avg'][0]:.2f}, after {res['load_avg_after'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
