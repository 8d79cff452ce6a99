"""Write and random-read throughput of storage.Archive on a local disk and on S3.

    .venv/bin/python bench/bench_storage.py                    # local + S3 (own Ceph gateway)
    .venv/bin/python bench/bench_storage.py --stores local
    CDC_S3_ENDPOINT=http://127.0.0.1:7480 .venv/bin/python bench/bench_storage.py --stores s3

For S3 it uses CDC_S3_ENDPOINT (+ CDC_S3_ACCESS_KEY / CDC_S3_SECRET_KEY) when set, else
starts scripts/s3-server on free loopback ports and stops it afterwards. Payloads are
random bytes (incompressible, like codec output) of uniformly random length.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storage import Archive, Record  # noqa: E402  (after the sys.path line)


def _no_cleanup() -> None:
    return None


def make_shard(k: int, n: int, mean: int, seed: int) -> list[Record]:
    rng = random.Random(f"{seed}-{k}")
    return [
        Record(
            f"bench/{k:05d}/{i:05d}.png",
            rng.randbytes(rng.randint(mean // 2, mean * 3 // 2)),
            height=512,
            width=768,
        )
        for i in range(n)
    ]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench(
    url: str, so: dict[str, Any] | None, args: argparse.Namespace
) -> list[tuple[str, float, float]]:
    n_shards = -(-args.records // args.shard_size)
    shards = [
        make_shard(k, min(args.shard_size, args.records - k * args.shard_size), args.mean_bytes, 0)
        for k in range(n_shards)
    ]
    total = sum(len(r.data) for s in shards for r in s)
    arch = Archive.create(
        url,
        codec_id="bench",
        model_id="bench",
        weights_digest="0" * 64,
        shard_size=args.shard_size,
        storage_options=so,
    )
    rows = []
    dt, _ = timed(lambda: [arch.write_shard(k, s) for k, s in enumerate(shards)])
    rows.append(("write (1 writer, whole shards)", args.records / dt, total / dt / 1e6))

    reader = Archive.open(url, storage_options=so, read_only=True)
    dt_index, keys = timed(reader.keys)
    rng = random.Random(1)
    sample = [rng.choice(keys) for _ in range(args.reads)]
    sizes = {r.key: len(r.data) for s in shards for r in s}
    dt, _ = timed(lambda: [reader[k] for k in sample])
    rows.append(
        ("random read archive[key]", len(sample) / dt, sum(sizes[k] for k in sample) / dt / 1e6)
    )
    dt, _ = timed(lambda: [reader.read_many(sample[i : i + 32]) for i in range(0, len(sample), 32)])
    rows.append(
        (
            "random read_many (batches of 32)",
            len(sample) / dt,
            sum(sizes[k] for k in sample) / dt / 1e6,
        )
    )
    dt, _ = timed(lambda: [reader.read_prefix(k, args.prefix_bytes) for k in sample])
    rows.append(
        (
            f"random read_prefix({args.prefix_bytes})",
            len(sample) / dt,
            len(sample) * args.prefix_bytes / dt / 1e6,
        )
    )
    dt, n = timed(lambda: sum(1 for _ in Archive.open(url, storage_options=so).records()))
    rows.append(("sequential records() scan", n / dt, total / dt / 1e6))
    rows.append(("open + build key index", len(keys) / dt_index, 0.0))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[dict[str, str], Callable[[], None]]:
    if os.environ.get("CDC_S3_ENDPOINT"):
        env = {
            k: os.environ.get(k, d)
            for k, d in (
                ("CDC_S3_ENDPOINT", ""),
                ("CDC_S3_ACCESS_KEY", "cdc-test"),
                ("CDC_S3_SECRET_KEY", "cdc-test-secret"),
            )
        }
        return env, lambda: None
    workdir = tempfile.mkdtemp(prefix="cdc-s3-bench-", dir="/tmp")
    script = str(REPO / "scripts" / "s3-server")
    env = {**os.environ, "CDC_S3_PORT": str(free_port()), "CDC_S3_MON_PORT": str(free_port())}
    out = subprocess.run(
        [script, "start", workdir], env=env, capture_output=True, text=True, check=True, timeout=240
    ).stdout
    cfg = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return cfg, lambda: subprocess.run(
        [script, "stop", workdir], check=False, capture_output=True, timeout=60
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--stores", default="local,s3")
    ap.add_argument("--records", type=int, default=2048)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--mean-bytes", type=int, default=32 * 1024, help="mean record size")
    ap.add_argument("--reads", type=int, default=500)
    ap.add_argument("--prefix-bytes", type=int, default=2048)
    ap.add_argument("--dir", default=None, help="local directory (default: a temp dir)")
    args = ap.parse_args()

    print(
        f"{args.records} records of ~{args.mean_bytes // 1024} KiB, shard_size {args.shard_size}, "
        f"{args.reads} random reads; {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs"
    )
    for store in args.stores.split(","):
        cleanup: Callable[[], None] = _no_cleanup
        if store == "local":
            base = tempfile.mkdtemp(prefix="cdc-bench-", dir=args.dir)
            url, so = os.path.join(base, "bench.zarr"), None
            cleanup = functools.partial(shutil.rmtree, base, ignore_errors=True)
        elif store == "s3":
            if not os.environ.get("CDC_S3_ENDPOINT") and shutil.which("radosgw") is None:
                print("s3: skipped (no CDC_S3_ENDPOINT and no radosgw; see docs/storage.md)")
                continue
            cfg, cleanup = start_s3()
            so = {
                "key": cfg["CDC_S3_ACCESS_KEY"],
                "secret": cfg["CDC_S3_SECRET_KEY"],
                "client_kwargs": {"endpoint_url": cfg["CDC_S3_ENDPOINT"]},
            }
            import s3fs

            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3fs.S3FileSystem(**so).mkdir(bucket)
            url = f"s3://{bucket}/bench.zarr"
        else:
            raise SystemExit(f"unknown store {store!r}")
        try:
            rows = bench(url, so, args)
        finally:
            cleanup()
        print(f"\n[{store}] {url}")
        print(f"  {'operation':36s} {'records/s':>10s} {'MB/s':>8s}")
        for name, rps, mbps in rows:
            print(
                f"  {name:36s} {rps:10.0f} {mbps:8.1f}"
                if mbps
                else f"  {name:36s} {rps:10.0f} {'-':>8s}"
            )


if __name__ == "__main__":
    main()
