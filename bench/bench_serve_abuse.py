"""`cdc serve` under abuse: a bounded burst of mixed hostile and honest requests.

    python bench/bench_serve_abuse.py --records 1000 --burst 200 --json serve-abuse.json

An archive of ``--records`` records of the shipped ``diffc-small`` (a progressive codec,
so prefix requests exist): a few generated 16–24 px photos encoded once, their streams
repeated under distinct keys, plus crafted records (DiffC streams a forger made: plans
edited with every CRC recomputed, k = 16 on every step in both candidate schemes, header
sizes of 65536 px, truncations, flipped bits with the trailer recomputed, another model's
digest). ``cdc serve`` runs in a subprocess on 127.0.0.1 (loopback only), its defaults
otherwise (``max_pending`` 32, ``max_queued`` 128, one replica).

Phases, every request with a client timeout (``--request-timeout``) and the whole run
bounded (``--max-seconds`` for the burst):

1. *before*: ``--probe`` valid requests one at a time (distinct keys, so each is a decode,
   not a cache hit) - latency p50/p99;
2. *burst*: ``--burst`` concurrent requests, a quarter each: valid keys (distinct, never
   requested before), unknown keys, crafted records (at several tiers and seeds) and prefix
   requests (``bpp=``: the longest prefix within that rate is read and decoded); latency of
   the valid ones, status counts per class;
3. *after*: ``--probe`` valid requests one at a time again.

Throughout, the resident memory of ``cdc serve``'s process tree (the CLI, Ray's processes,
the Serve proxy and replica) is sampled every 0.5 s. Checked: every non-200 answer is one
JSON line ``{"detail": "..."}``; the replica's process is the same before and after (no
worker lost: Ray would restart a dead one under a new PID) and ``/healthz`` answers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = "diffc-small"
#: `cdc serve` run as ``python -c LAUNCH serve ...``: the CLI as is, except for the waits
#: of Ray's node start that a loaded 2-core VM misses (then `cdc serve` exits): the raylet
#: gives its dashboard and runtime-env agents 15 s (hard-coded) to write their port files
#: unless it is given the ports, so free loopback ports are given, and the agent HTTP
#: server's port file (no flag for it) is written beforehand as -1, "not in use" (what the
#: agent itself writes when it runs without one; Serve's Python API does not use it); and
#: the driver waits 30 s (hard-coded in node.py) for the node to register, so its lookup is
#: retried up to 300 s. (ray-project/ray#65983.)
LAUNCH = """
import runpy, socket, sys, time
import ray._private.parameter as parameter
import ray._private.services as services
_init = parameter.RayParams.__init__
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
def init(self, *a, **k):
    _init(self, *a, **k)
    for name in ("metrics_agent_port", "metrics_export_port", "dashboard_agent_listen_port",
                 "runtime_env_agent_port"):
        if not getattr(self, name, None):
            setattr(self, name, _free_port())
parameter.RayParams.__init__ = init
_start_raylet = services.start_raylet
def start_raylet(*a, **k):
    import inspect
    from ray._raylet import DASHBOARD_AGENT_LISTEN_PORT_NAME, persist_port
    b = inspect.signature(_start_raylet).bind(*a, **k).arguments
    persist_port(b["session_dir"], b["node_id"], DASHBOARD_AGENT_LISTEN_PORT_NAME, -1)
    return _start_raylet(*a, **k)
services.start_raylet = start_raylet
_get_node = services.get_node
def get_node(*a, **k):
    t = time.monotonic()
    while True:
        try:
            return _get_node(*a, **k)
        except RuntimeError:
            if time.monotonic() - t > 300:
                raise
            time.sleep(0.5)
services.get_node = get_node
sys.argv = ["cdc", *sys.argv[1:]]
runpy.run_module("jobs.cli", run_name="__main__")
"""
SIZES = ((16, 16), (16, 24), (24, 16), (24, 24), (20, 20), (16, 20), (20, 24), (24, 20))


def crafted_streams(good: list[bytes], n: int, seed: int = 0) -> list[bytes]:
    """``n`` hostile DiffC streams made from the good ones (see the module doc)."""
    from bench.bench_fuzz import fuzz_cases
    from bench.streams import patch_header
    from cdc.diffc import stream as st

    p = st.parse(good[0])
    out = []
    for layout in (st.LAYOUT_PHILOX, 0):  # k = 16 on every step, the last candidate named
        steps = [st.Step(s.t, 1, 16) for s in p.plan.steps]
        plan = st.Plan(p.plan.seed, p.plan.t_start, steps, st.CODING_FIXED, layout)
        out.append(st.pack(p.digest, p.height, p.width, p.flags, plan,
                           [b"\xff\xff"] * len(steps)))
    out += [patch_header(good[0], height=65536, width=65536), patch_header(good[1], height=1),
            good[2][: len(good[2]) // 2], bytes(32) + good[3][32:]]
    cases = fuzz_cases({MODEL: good}, 8 * n, seed,
                       kinds=("section", "header", "bitflip+crc", "splice"))
    out += [d for _, _, _, d in cases]
    return out[:n]


def build_archive(url: str, records: int, crafted: int) -> dict:
    """The archive: ``records - crafted`` honest records and ``crafted`` hostile ones."""
    import torch
    from PIL import Image

    from bench.streams import smooth_image
    from pipeline.archive.opening import open_or_create
    from storage import Record
    from zoo import load_codec

    torch.set_num_threads(1)
    codec = load_codec(MODEL)
    good = [(codec.compress(Image.fromarray(smooth_image(h, w, i))), h, w)
            for i, (h, w) in enumerate(SIZES)]
    arch, _ = open_or_create(url, codec, shard_size=100)
    bad = crafted_streams([g for g, _, _ in good], crafted)
    recs = [Record(f"img{i:04d}.png", *good[i % len(good)]) for i in range(records - crafted)]
    recs += [Record(f"crafted{i:03d}.png", d, 16, 16) for i, d in enumerate(bad)]
    for s in range(0, len(recs), 100):
        arch.write_shard(s // 100, recs[s : s + 100])
    arch.ensure_index()
    return {"records": len(recs), "crafted": len(bad), "distinct_good_streams": len(good),
            "stream_bytes": sorted({len(g) for g, _, _ in good})}


# -- the process tree's memory -----------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def replica_pids(pid: int) -> list[int]:
    out = []
    for p in tree(pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"ServeReplica" in cmd:
            out.append(p)
    return sorted(out)


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, str, int]] = []
        self.phase = "idle"
        self.halt = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.halt.is_set():
            self.samples.append((time.perf_counter() - t0, self.phase, rss_bytes(tree(self.pid))))
            self.halt.wait(self.every)

    def by_phase(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for phase in dict.fromkeys(p for _, p, _ in self.samples):
            v = [b for _, p, b in self.samples if p == phase]
            out[phase] = {"min_mib": min(v) / 2**20, "max_mib": max(v) / 2**20,
                          "last_mib": v[-1] / 2**20, "samples": len(v)}
        return out


# -- requests ----------------------------------------------------------------------------
def one_line_json_error(body: bytes) -> bool:
    try:
        text = body.decode()
        detail = json.loads(text)["detail"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return False
    return isinstance(detail, str) and "\n" not in text.strip() and "\n" not in detail


def timed_get(url: str, timeout: float) -> dict:
    from tests.serve_helpers import http_get

    t = time.perf_counter()
    try:
        status, headers, body = http_get(url, timeout=timeout)
    except OSError as e:  # a client timeout or a refused connection
        return {"status": None, "error": type(e).__name__, "seconds": time.perf_counter() - t}
    return {"status": status, "seconds": time.perf_counter() - t,
            "one_line_json": status == 200 or one_line_json_error(body),
            "detail": None if status == 200 else body[:300].decode(errors="replace"),
            "source": headers.get("x-cdc-source")}


def pct(v: list[float], q: float) -> float | None:
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def summary(rs: list[dict]) -> dict:
    lat = [r["seconds"] for r in rs if r["status"] == 200]
    statuses: dict[str, int] = {}
    for r in rs:
        k = str(r["status"] if r["status"] is not None else r["error"])
        statuses[k] = statuses.get(k, 0) + 1
    return {"n": len(rs), "statuses": statuses, "ok": len(lat),
            "p50_s": pct(lat, 50), "p99_s": pct(lat, 99),
            "mean_s": statistics.fmean(lat) if lat else None,
            "errors_not_one_json_line": sum(1 for r in rs if r["status"] not in (200, None)
                                            and not r["one_line_json"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--crafted", type=int, default=40, help="of the records")
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--probe", type=int, default=20, help="valid requests before and after")
    ap.add_argument("--bpp", type=float, default=2.0, help="the prefix requests' rate")
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--start-timeout", type=float, default=900.0)
    ap.add_argument("--start-tries", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=900.0, help="the burst's bound")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tests.serve_helpers import CdcServe, http_get

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-serve-abuse-"))
    url = str(work / "abuse.zarr")
    rep: dict = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
                 "cpus": os.cpu_count(), "model": MODEL}
    t = time.perf_counter()
    if not Path(url).exists():
        rep["archive"] = build_archive(url, args.records, args.crafted)
    rep["archive_seconds"] = time.perf_counter() - t
    print(f"archive: {rep.get('archive')} in {rep['archive_seconds']:.0f} s", flush=True)

    rng = random.Random(args.seed)
    good = [f"img{i:04d}.png" for i in range(args.records - args.crafted)]
    rng.shuffle(good)
    crafted = [f"crafted{i:03d}.png" for i in range(args.crafted)]
    # Ray's workers on a loaded VM: more than its 60 s to register (a Ray config variable)
    os.environ.setdefault("RAY_worker_register_timeout_seconds", "600")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "600000")

    class Serve(CdcServe):
        def command(self, port: int) -> list[str]:
            cmd = super().command(port)
            assert cmd[1:3] == ["-m", "jobs.cli"], cmd
            return [cmd[0], "-c", LAUNCH, *cmd[3:]]

    t = time.perf_counter()
    rep["start_failures"] = []
    for attempt in range(args.start_tries):
        server = Serve(url, cache_dir=str(work / "cache"), log=work / f"serve{attempt}.log",
                          start_timeout_s=args.start_timeout)
        try:
            base = server.__enter__()
            break
        except (RuntimeError, TimeoutError) as e:
            if server.proc is not None:
                try:
                    os.killpg(server.proc.pid, 9)
                except (ProcessLookupError, PermissionError):
                    pass
            rep["start_failures"].append(str(e).strip().splitlines()[-1][:200])
            print(f"cdc serve did not start (try {attempt + 1}): "
                  f"{rep['start_failures'][-1]}", flush=True)
    else:
        raise SystemExit(f"cdc serve did not start in {args.start_tries} tries")
    try:
        rep["start_seconds"] = time.perf_counter() - t
        print(f"cdc serve up in {rep['start_seconds']:.0f} s at {base}", flush=True)
        pid = server.proc.pid
        mem = MemorySampler(pid)
        mem.start()
        timeout = args.request_timeout
        mem.phase = "warm-up"
        rep["warm_up"] = timed_get(f"{base}/images/{good.pop()}", timeout)
        replicas_before = replica_pids(pid)
        health_before = json.loads(http_get(f"{base}/healthz")[2])

        mem.phase = "before"
        before = [timed_get(f"{base}/images/{good.pop()}", timeout) for _ in range(args.probe)]
        print(f"before: {summary(before)}", flush=True)

        q = args.burst // 4
        urls = ([("valid", f"{base}/images/{good.pop()}") for _ in range(q)]
                + [("unknown", f"{base}/images/nope{i:04d}.png") for i in range(q)]
                + [("crafted", f"{base}/images/{crafted[i % len(crafted)]}"
                               + ("" if i < len(crafted) else f"?seed={i}"))
                   for i in range(q)]
                + [("prefix", f"{base}/images/{good.pop()}?bpp={args.bpp}")
                   for _ in range(args.burst - 3 * q)])
        rng.shuffle(urls)
        mem.phase = "burst"
        t = time.perf_counter()
        deadline = t + args.max_seconds
        with ThreadPoolExecutor(len(urls)) as pool:
            futs = [(kind, pool.submit(timed_get, u, min(timeout, args.max_seconds)))
                    for kind, u in urls]
            burst = [(kind, f.result(timeout=max(1.0, deadline - time.perf_counter()) + 30))
                     for kind, f in futs]
        rep["burst_seconds"] = time.perf_counter() - t
        mem.phase = "after"
        after = [timed_get(f"{base}/images/{good.pop()}", timeout) for _ in range(args.probe)]
        time.sleep(2)
        replicas_after = replica_pids(pid)
        status, _, body = http_get(f"{base}/healthz")
        health_after = json.loads(body) if status == 200 else {"status": status}
        mem.halt.set()
        mem.join()
    finally:
        server.stop()
        try:  # Ray's agents can outlive their raylet: the rest of `cdc serve`'s session
            os.killpg(server.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass

    by_kind = {k: summary([r for kk, r in burst if kk == k])
               for k in ("valid", "unknown", "crafted", "prefix")}
    crafted_details: dict[str, int] = {}
    for kind, r in burst:
        if kind == "crafted" and r["detail"]:
            d = json.loads(r["detail"])["detail"] if r["one_line_json"] else r["detail"]
            head = d.split(": ", 1)[-1][:90]  # without the key
            crafted_details[f"{r['status']} {head}"] = crafted_details.get(
                f"{r['status']} {head}", 0) + 1
    rep.update(
        before=summary(before), burst=by_kind, after=summary(after),
        burst_all=summary([r for _, r in burst]),
        crafted_answers=dict(sorted(crafted_details.items(), key=lambda x: -x[1])),
        memory=mem.by_phase(), replicas_before=replicas_before, replicas_after=replicas_after,
        worker_lost=replicas_before != replicas_after or health_after.get("status") != "ok",
        health_before=health_before, health_after=health_after,
        errors_not_one_json_line=sum(s["errors_not_one_json_line"]
                                     for s in (summary(before), summary(after),
                                               summary([r for _, r in burst]))))
    print(json.dumps({k: rep[k] for k in ("before", "burst", "after", "memory", "worker_lost",
                                          "errors_not_one_json_line", "crafted_answers")},
                     indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2))
    bad = rep["worker_lost"] or rep["errors_not_one_json_line"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
