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
  (the root ``zarr.json``), bytes <= 1.1x the record. Before/after in one run: first as
  the shard writers leave the archive (no key table: the old lookup path, and what an
  archive written before the key table reads like), then after ``build_index()``.
* ``local``: the same get on a local archive, before/after: store reads counted in
  process (open, lookup, payload) and the command's wall time.
* ``gallery``: ``cdc serve`` on a ``--gallery-records`` archive (default 10,000): time from
  the server answering ``/healthz`` to the gallery's first thumbnail (the page, ``/info``,
  the first ``/images?limit=120&details=true`` page, then the first tile's
  ``/images/{key}?tier=preview&width=256&format=webp``), and from starting the process.
* ``thumb``: the same first thumbnail without Ray Serve, in this process (open, first
  page of keys, first preview decoded and resized): for machines too loaded for Serve;
  before/after the key table, like ``get``.
* ``chaos``: bench/bench_chaos.py's kill (an encoder SIGKILLed ``--kill-every`` s after it
  starts working, again after each restart) on an archive job writing to S3 (local PNGs,
  ``--chaos-images`` of 64x64, shards of 64, one actor); a clean job (local archive) is the
  reference. Reported: images lost (missing or payload different: target 0), and what a
  reader sees right after the killed run, before any rerun: ``Archive.verify()`` of every
  visible shard, and the payload objects left by killed attempts (orphans) that no reader
  sees (target: none visible). First, always, the case a job-level kill rarely hits: a
  shard writer SIGKILLed mid-commit (payload and row chunks on S3, no manifest entry),
  what a reader and the key table see, and the takeover rewrite (``--chaos-images 0``:
  only that).

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


def fill_archive(url: str, so: dict[str, Any] | None, model: str, n: int, distinct: int,
                 shard_size: int = 256) -> dict[str, Any]:
    """``n`` records of real streams (``distinct`` images encoded once), see the docstring."""
    from bench.streams import smooth_image
    from pipeline.archive.codec_adapter import codec_config, full_codec, weights_digest
    from pipeline.archive.codec_tiers import tiers_for
    from pipeline.archive.tier_settings import check_tiers
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


def cdc_get_counted(cfg: dict[str, str], url: str, key: str, archive_path: str,
                    rec_bytes: int) -> dict[str, Any]:
    """One ``cdc get KEY --tier preview --no-cache`` in a subprocess through the counting
    proxy: requests and bytes by kind, against the record's size."""
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
    kinds = Counter(kind(q, archive_path) for q in reqs)
    bytes_by: Counter[str] = Counter()
    for q in reqs:
        bytes_by[kind(q, archive_path)] += q.body_bytes
    open_reqs = [q for q in reqs if q.path == f"{archive_path}/zarr.json"][:1]
    total = sum(q.body_bytes for q in reqs)
    beyond = total - sum(q.body_bytes for q in open_reqs)
    return {"requests": len(reqs), "requests_beyond_open": len(reqs) - len(open_reqs),
            "bytes": total, "bytes_beyond_open": beyond, "bytes_over_record": total / rec_bytes,
            "bytes_beyond_open_over_record": beyond / rec_bytes, "by_kind": dict(kinds),
            "bytes_by_kind": dict(bytes_by), "wall_s": wall, "stdout": r.stdout.strip()}


def print_get(label: str, g: dict[str, Any], rec_bytes: int) -> None:
    print(f"get {label}: record {rec_bytes} B; {g['requests']} requests "
          f"({g['requests_beyond_open']} beyond the first open), {g['bytes']} B fetched "
          f"({g['bytes_beyond_open']} B beyond the open = "
          f"{g['bytes_beyond_open_over_record']:.2f}x the record); {g['wall_s']:.1f} s",
          flush=True)
    for k, v in sorted(g["by_kind"].items()):
        print(f"   {v:4d} x {k:<28} {g['bytes_by_kind'][k]:>9} B")


def part_get(cfg: dict[str, str], args: argparse.Namespace, res: dict[str, Any]) -> None:
    """Before/after in one run: the archive as the shard writers leave it (no key table:
    the old lookup path, what an archive written before the table reads like), then after
    ``Archive.build_index()`` (what every ``cdc archive`` job does at its end)."""
    from storage import Archive

    so = s3_options(cfg)
    bucket = new_bucket(cfg, "bench-get")
    url = f"s3://{bucket}/get.zarr"
    info = fill_archive(url, so, args.model, args.records, args.distinct)
    key = f"img{args.records // 2:05d}.png"
    arch = Archive.open(url, storage_options=so)
    rec_bytes = arch.info(key).nbytes
    path = f"/{bucket}/get.zarr"
    before = cdc_get_counted(cfg, url, key, path, rec_bytes)
    t = time.perf_counter()
    table = Archive.open(url, storage_options=so).build_index()
    build_s = time.perf_counter() - t
    after = cdc_get_counted(cfg, url, key, path, rec_bytes)
    res["get"] = {"records": args.records, "key": key, "record_bytes": rec_bytes, **info,
                  "before": before, "after": after, "build_index_s": build_s,
                  "key_table": {k: table[k] for k in ("window", "n_slots", "keys",
                                                       "entries_bytes")}}
    print(f"get: {args.records} records; key table built in {build_s:.2f} s "
          f"(window {table['window']} slots)")
    print_get("before (no key table)", before, rec_bytes)
    print_get("after (key table)", after, rec_bytes)


def part_local(cfg: dict[str, str], args: argparse.Namespace, res: dict[str, Any]) -> None:
    """The same ``cdc get`` on a local archive, before/after the key table: store reads
    counted in process (open + lookup + payload, the decode excluded) and the command's
    wall time in a subprocess."""
    from zarr.storage import LocalStore

    from storage import Archive

    work = Path(tempfile.mkdtemp(prefix="cdc-bench-local-"))
    url = str(work / "get.zarr")
    fill_archive(url, None, args.model, args.records, args.distinct)
    key = f"img{args.records // 2:05d}.png"
    calls: list[tuple[str, int]] = []
    orig_get, orig_list = LocalStore.get, LocalStore.list_prefix

    async def get(self: Any, k: str, prototype: Any, byte_range: Any = None) -> Any:
        buf = await orig_get(self, k, prototype, byte_range)
        calls.append((k, 0 if buf is None else len(buf)))
        return buf

    def list_prefix(self: Any, prefix: str) -> Any:
        calls.append((f"list {prefix}", 0))
        return orig_list(self, prefix)

    def measure() -> dict[str, Any]:
        calls.clear()
        LocalStore.get, LocalStore.list_prefix = get, list_prefix  # type: ignore[method-assign]
        try:
            t = time.perf_counter()
            a = Archive.open(url, read_only=True)
            rec = a[key]
            a.cache_get(key, "preview")
            dt = time.perf_counter() - t
        finally:
            LocalStore.get, LocalStore.list_prefix = orig_get, orig_list  # type: ignore[method-assign]
        reads = len(calls)
        out = work / "out.png"
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "jobs.cli", "get", url, key, str(out),
                            "--tier", "preview", "--no-cache"], cwd=REPO, capture_output=True,
                           text=True, timeout=600, check=False,
                           env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"cdc get failed: {r.stderr}")
        return {"store_reads": reads, "bytes_read": sum(n for _, n in calls),
                "open_and_read_s": dt, "cdc_get_wall_s": wall, "record_bytes": len(rec.data)}

    before = measure()
    Archive.open(url).build_index()
    after = measure()
    res["local"] = {"records": args.records, "before": before, "after": after}
    for label, g in (("before", before), ("after", after)):
        print(f"local get {label}: {g['store_reads']} store reads, {g['bytes_read']} B "
              f"(record {g['record_bytes']} B), open+lookup+read {g['open_and_read_s'] * 1e3:.0f}"
              f" ms; `cdc get` {g['cdc_get_wall_s']:.1f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)


def part_gallery(cfg: dict[str, str], args: argparse.Namespace, res: dict[str, Any]) -> None:
    from tests.serve_helpers import CdcServe, http_get

    so = s3_options(cfg)
    bucket = new_bucket(cfg, "bench-gallery")
    url = f"s3://{bucket}/gallery.zarr"
    info = fill_archive(url, so, args.model, args.gallery_records, args.distinct)
    if not args.no_key_table:  # as a `cdc archive` job leaves it
        from storage import Archive

        Archive.open(url, storage_options=so).build_index()
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
        "key_table": not args.no_key_table,
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
    and resized to a 256 px WebP, through the proxy. Before/after in one run: the archive
    as the shard writers leave it (no key table), then after ``build_index()``."""
    from PIL import Image

    from pipeline.archive import Reader
    from storage import Archive
    from zoo import load_codec

    so = s3_options(cfg)
    bucket = new_bucket(cfg, "bench-thumb")
    url = f"s3://{bucket}/gallery.zarr"
    info = fill_archive(url, so, args.model, args.gallery_records, args.distinct)
    codec = load_codec(args.model)

    def measure() -> dict[str, Any]:
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
            reqs = proxy.snapshot()
        return {"keys": len(keys), "page_items": len(page), "open_s": t_open - t0,
                "first_page_s": t_page - t0, "first_thumbnail_s": t_thumb - t0,
                "requests_to_first_page": n_page, "requests_to_first_thumbnail": len(reqs),
                "bytes_to_first_thumbnail": sum(q.body_bytes for q in reqs)}

    before = measure()
    t = time.perf_counter()
    Archive.open(url, storage_options=so).build_index()
    build_s = time.perf_counter() - t
    after = measure()
    res["thumb"] = {"records": args.gallery_records, **info, "build_index_s": build_s,
                    "before": before, "after": after}
    for label, g in (("before (no key table)", before), ("after (key table)", after)):
        print(f"first thumbnail {label} (in process, no Serve): {args.gallery_records} "
              f"records; open {g['open_s']:.2f} s, first page of 120 keys "
              f"{g['first_page_s']:.2f} s ({g['requests_to_first_page']} requests), first "
              f"thumbnail {g['first_thumbnail_s']:.2f} s ({g['requests_to_first_thumbnail']} "
              f"requests, {g['bytes_to_first_thumbnail']} B)", flush=True)
    print(f"   key table built in {build_s:.1f} s")


def _kill_mid_commit(url: str, so: dict[str, Any], shard: int, records: list[Any]) -> None:
    """Write ``records`` as ``shard`` and SIGKILL this process mid-commit: every array
    chunk and the payload object are on the server, the manifest entry is not."""
    import signal

    from storage import Archive

    arch = Archive.open(url, storage_options=so)
    w = arch.writer(shard, owner="killed-mid-commit").open()
    w.write_all(records)
    loc = arch.parts.arrays._loc
    create = loc.create

    async def die_on_manifest(key: str, data: bytes) -> bool:
        if key.startswith("manifest/"):
            os.kill(os.getpid(), signal.SIGKILL)
        return await create(key, data)

    loc.create = die_on_manifest  # type: ignore[method-assign]
    w.commit()


def mid_commit_kill(cfg: dict[str, str]) -> dict[str, Any]:
    """The case the job-level kill rarely hits: a writer SIGKILLed between its payload and
    its manifest entry, on S3. What a reader sees then (target: the half-written shard
    invisible, the archive verifying clean, the key table not covering it), and after a
    takeover rewrite (target: 0 records lost)."""
    import multiprocessing as mp
    import random

    import s3fs

    from storage import Archive, Record

    so = s3_options(cfg)
    url = f"s3://{new_bucket(cfg, 'bench-commit-kill')}/kill.zarr"
    rng = random.Random(0)

    def recs(shard: int) -> list[Record]:
        return [Record(f"s{shard}/{i:03d}.png", rng.randbytes(rng.randint(100, 3000)),
                       height=64, width=64) for i in range(64)]

    arch = Archive.create(url, codec_id="bench", model_id="bench", weights_digest="sha256:00",
                          shard_size=64, storage_options=so)
    good, doomed = recs(0), recs(1)
    arch.write_shard(0, good)
    proc = mp.get_context("spawn").Process(target=_kill_mid_commit, args=(url, so, 1, doomed))
    proc.start()
    proc.join(300)
    fs = s3fs.S3FileSystem(**so)
    objects = {p.split("/", 1)[1] for p in fs.find(url[5:])}
    reader = Archive.open(url, storage_options=so)
    seen = {"exit_code": proc.exitcode, "visible_shards": reader.completed_shards(),
            "records_visible": len(reader), "payload_object_of_killed_shard_on_s3":
            any(o.endswith("bitstream/c/1/0") for o in objects),
            "claim_left": sorted(reader.claims()), "verify_records": reader.verify()["records"],
            "killed_keys_visible": sum(r.key in reader for r in doomed)}
    reader.ensure_index()
    table = Archive.open(url, storage_options=so, read_only=True)
    seen["key_table_shards"] = table.attrs["key_table"]["shards"]
    seen["killed_keys_found_via_table"] = sum(r.key in table for r in doomed)
    arch.write_shard(1, doomed, takeover=True)
    arch.ensure_index()
    back = Archive.open(url, storage_options=so, read_only=True)
    lost = sum(back.get(r.key) != r for r in good + doomed)
    seen.update(records_after_rerun=len(Archive.open(url, storage_options=so)), lost=lost)
    return seen


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
    job = {"actors": 1, "shard_size": args.chaos_shard_size, "batch_size": 8}
    commit_kill = mid_commit_kill(cfg)
    print(f"mid-commit kill on S3: {commit_kill}", flush=True)
    res["chaos_mid_commit"] = commit_kill
    if args.chaos_images <= 0:
        return
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
        table_after_kill = (arch.attrs.get("key_table") or {}).get("shards")
        import s3fs

        fs = s3fs.S3FileSystem(**s3_options(cfg))
        payloads = {int(p.split("/")[-2]) for p in fs.find(url[5:] + "/bitstream/c")}
        orphans = sorted(payloads - set(visible))
        runs = [first]
        while not runs[-1]["complete"] and len(runs) <= 3:
            runs.append(run_job(src, url, args.model, **job))
        cmp = compare(ref, digests(url), args.chaos_images)  # lookups through the key table
        final = Archive.open(url, read_only=True)
        table_final = (final.attrs.get("key_table") or {}).get("shards")
        completed_final = final.completed_shards()
    finally:
        ray.shutdown()
    res["chaos"] = {
        "images": args.chaos_images, "kill_every_s": args.kill_every, "kills": len(killer.kills),
        "mid_shard_kills": killer.mid_shard, "retries": sum(r["shards"]["retries"] for r in runs),
        "reruns": len(runs) - 1, "complete": runs[-1]["complete"],
        "seconds": sum(r["wall_s"] for r in runs), "clean_local_seconds": clean["wall_s"],
        "after_killed_run": {"visible_shards": len(visible), "verified_records":
                             verified.get("records") if isinstance(verified, dict) else None,
                             "orphan_payload_objects_invisible": orphans,
                             "key_table_shards": table_after_kill},
        "key_table_shards_final": table_final, "completed_shards_final": len(completed_final),
        **cmp}
    c = res["chaos"]
    print(f"chaos on S3: {c['images']} images, {c['kills']} encoder kills "
          f"({c['mid_shard_kills']} mid-shard), {c['retries']} shard retries, {c['reruns']} "
          f"rerun(s); after the killed run a reader sees {len(visible)} complete shards, all "
          f"verified ({c['after_killed_run']['verified_records']} records), and none of the "
          f"{len(orphans)} payload objects of unfinished attempts; images lost: {c['lost']} "
          f"(missing {c['missing']}, differ {c['differ']}); {c['seconds']:.0f} s "
          f"(clean local job {c['clean_local_seconds']:.0f} s); key table after the killed "
          f"run {c['after_killed_run']['key_table_shards']}, after the rerun "
          f"{c['key_table_shards_final']} over {c['completed_shards_final']} shards",
          flush=True)
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
    ap.add_argument("--chaos-shard-size", type=int, default=64)
    ap.add_argument("--no-key-table", action="store_true",
                    help="gallery: serve the archive without building its key table")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg, stop = start_s3()
    res: dict[str, Any] = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
                           "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    try:
        for part in args.parts.split(","):
            {"get": part_get, "local": part_local, "gallery": part_gallery,
             "thumb": part_thumb, "chaos": part_chaos}[part](cfg, args, res)
    finally:
        stop()
    res["load_avg_after"] = os.getloadavg()
    print(f"load average before {res['load_avg'][0]:.2f}, after {res['load_avg_after'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
