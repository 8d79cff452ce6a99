"""Chaos and throughput at scale: an N-image archive job on the embedded Ray, once clean
and once with an encoder process SIGKILLed every few seconds; the archive of the killed
run must end with every image, each record byte-identical to the clean run's.

    python bench/bench_chaos.py                       # 10,000 images of 64x64, kill every 5 s
    python bench/bench_chaos.py --kill-every 0        # throughput only: job / bare codec
    python bench/bench_chaos.py --images 2000 --json chaos.json

Steps, on the same generated photos (bench/bench_jobs.py's gradients + noise, PNG):

1. **bare codec**: ``compress_batch`` of in-memory images (the first ``--bare-images``),
   one torch thread: the ceiling a job could reach;
2. **clean job**: ``run_archive_job`` (one actor of one thread unless ``--actors``) into a
   fresh archive; Ray is started once beforehand with ``address="local"`` and its start-up
   is printed, not counted (as in bench_jobs.py);
3. **chaos job** (unless ``--kill-every 0``): the same job into another archive while a
   thread SIGKILLs each encoder's worker process ``--kill-every`` seconds after it started
   working (its first progress event; each event carries its actor's pid): Ray restarts
   the actor, which loads the model again (~5–20 s here) and is killed again after the
   same working time, and so on to the end of the job.
   If the job ends incomplete (a shard out of attempts), it is rerun as ``cdc archive``
   would (resume), without kills, until complete (at most ``--reruns``).

Printed: bare images/s; clean job images/s and job/bare end to end; kills, shard retries,
reruns, images lost (keys missing or whose payload differs from the clean run's: target
0) and the chaos run's throughput against the clean job's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_images(src: Path, n: int, w: int, h: int) -> None:
    from PIL import Image

    from bench.streams import smooth_image

    src.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(smooth_image(h, w, i)).save(src / f"img{i:05d}.png")


def bare_codec(model: str, src: Path, n: int, batch_size: int) -> float:
    """images/s of ``compress_batch`` on the first ``n`` images, decoded in memory first
    (bench/bench_jobs.py's bare loop, one thread)."""
    from PIL import Image

    from bench.bench_jobs import bare
    from zoo import load_codec

    files = sorted(src.iterdir())[:n]
    images = [Image.open(f).convert("RGB") for f in files]
    return bare(load_codec(model), images, batch_size, threads=1)


def digests(url: str) -> dict[str, str]:
    """key -> sha256 of the record's payload, for every ok record."""
    from storage import Archive

    arch = Archive.open(url)
    return {k: hashlib.sha256(arch[k].data).hexdigest() for k in arch if arch.info(k).ok}


class Killer:
    """SIGKILLs each encoder process once it has been working for ``every`` seconds (from
    its first progress event), at most ``max_kills`` in all.

    Counting from the first progress event, not from the previous kill, keeps the job
    moving: a restarted actor spends ~5-20 s here importing torch and loading the model
    before it encodes anything, so a fixed kill clock faster than that would kill every
    incarnation before it finished a shard (a livelock, not a test)."""

    def __init__(self, every: float, max_kills: int | None = None):
        self.every, self.max_kills = every, max_kills
        self.kills: list[tuple[float, int]] = []
        self._first: dict[int, float] = {}  # pid -> its first progress event
        self._dead: set[int] = set()
        self._open: dict[int, set[int]] = {}  # pid -> shards it reported progress on, uncommitted
        self.mid_shard = 0  # kills that landed while their process had a shard half-encoded
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.perf_counter()

    def on_event(self, ev: dict) -> None:
        pid = ev.get("pid")
        if not isinstance(pid, int):
            return
        with self._lock:
            if ev.get("type") == "progress":
                self._open.setdefault(pid, set()).add(ev.get("shard"))
                if pid not in self._dead:
                    self._first.setdefault(pid, time.perf_counter())
            elif ev.get("type") == "shard":
                self._open.get(pid, set()).discard(ev.get("shard"))
        if self.every <= 0 and ev.get("type") == "progress":
            # "at the first progress event": now, while its shard is open, not at the next
            # 0.1-s tick (a fast encoder may have committed the shard by then)
            self._kill_due()

    def start(self) -> Killer:
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if not self._kill_due():
                return

    def _kill_due(self) -> bool:
        """Kill every process due; False once ``max_kills`` is reached."""
        now = time.perf_counter()
        with self._lock:
            if self.max_kills is not None and len(self.kills) >= self.max_kills:
                return False
            due = [p for p, t in self._first.items() if now - t >= self.every]
            if self.max_kills is not None:
                due = due[:self.max_kills - len(self.kills)]
            for p in due:
                self._first.pop(p)
                self._dead.add(p)
                self.mid_shard += bool(self._open.get(p))
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.kills.append((now - self.t0, p))
        return True


def run_job(src: Path, url: str, model: str, *, actors: int, shard_size: int,
            batch_size: int, on_event=None) -> dict:
    from jobs.encode import ArchiveJobConfig, run_archive_job
    from pipeline.archive.encoding import EncodeOptions

    cfg = ArchiveJobConfig(src=str(src), url=url, model=model, actors=actors,
                           cpus_per_actor=1.0, shard_size=shard_size, progress=False,
                           options=EncodeOptions(batch_size=batch_size))
    t = time.perf_counter()
    s = run_archive_job(cfg, on_event=on_event)
    s["wall_s"] = time.perf_counter() - t
    return s


def chaos_run(src: Path, url: str, model: str, *, kill_every: float, max_kills: int | None,
              reruns: int, **job) -> dict:
    """The job with an encoder killed every ``kill_every`` s, then reruns until complete."""
    killer = Killer(kill_every, max_kills).start()
    try:
        first = run_job(src, url, model, on_event=killer.on_event, **job)
    finally:
        killer.stop()
    runs = [first]
    while not runs[-1]["complete"] and len(runs) <= reruns:
        runs.append(run_job(src, url, model, **job))
    return {"runs": runs, "kills": killer.kills, "mid_shard_kills": killer.mid_shard,
            "complete": runs[-1]["complete"],
            "retries": sum(r["shards"]["retries"] for r in runs),
            "failed_shards_first_run": len(first["shards"]["failed"]),
            "seconds": sum(r["wall_s"] for r in runs)}


def compare(clean: dict[str, str], got: dict[str, str], n: int) -> dict:
    missing = [k for k in clean if k not in got]
    differ = [k for k in clean if k in got and got[k] != clean[k]]
    return {"expected": n, "clean_records": len(clean), "present": len(got),
            "missing": len(missing), "differ": len(differ), "lost": len(missing) + len(differ),
            "extra": len([k for k in got if k not in clean]), "examples": (missing + differ)[:5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--size", default="64x64", help="WxH")
    ap.add_argument("--model", default="cdc-small")
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--kill-every", type=float, default=5.0, help="seconds; 0: no chaos run")
    ap.add_argument("--max-kills", type=int, default=None)
    ap.add_argument("--reruns", type=int, default=3)
    ap.add_argument("--bare-images", type=int, default=2000,
                    help="images the bare codec is timed on (a steady rate)")
    ap.add_argument("--workdir", default=None, help="default: a temporary folder, removed")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from jobs.cluster import quiet_env, use_loopback

    quiet_env()
    use_loopback()
    import ray

    w, h = (int(v) for v in args.size.split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cdc-bench-chaos-"))
    res: dict = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
                 "images": args.images, "size": args.size, "model": args.model,
                 "actors": args.actors, "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    try:
        src = work / "images"
        t = time.perf_counter()
        if not src.exists():
            make_images(src, args.images, w, h)
        res["make_images_s"] = time.perf_counter() - t
        res["bare_ips"] = bare_codec(args.model, src, min(args.bare_images, args.images),
                                     args.batch_size)
        print(f"bare codec, 1 thread: {res['bare_ips']:.1f} images/s "
              f"({min(args.bare_images, args.images)} images)", flush=True)
        t = time.perf_counter()
        ray.init(address="local", num_cpus=args.actors, include_dashboard=False,
                 log_to_driver=False, object_store_memory=128 * 1024 * 1024,
                 _node_ip_address="127.0.0.1")
        res["ray_start_s"] = time.perf_counter() - t
        job = {"actors": args.actors, "shard_size": args.shard_size,
               "batch_size": args.batch_size}
        try:
            clean_url = str(work / "clean.zarr")
            shutil.rmtree(clean_url, ignore_errors=True)
            clean = run_job(src, clean_url, args.model, **job)
            assert clean["complete"], clean["failures"][:3]
            res["clean"] = {"seconds": clean["wall_s"], "ips": args.images / clean["wall_s"],
                            "retries": clean["shards"]["retries"]}
            res["job_over_bare"] = res["clean"]["ips"] / res["bare_ips"]
            print(f"clean job: {args.images} images in {clean['wall_s']:.1f} s, "
                  f"{res['clean']['ips']:.1f} images/s; job / bare codec end to end "
                  f"{res['job_over_bare']:.3f}", flush=True)
            ref = digests(clean_url)
            if args.kill_every > 0:
                url = str(work / "chaos.zarr")
                shutil.rmtree(url, ignore_errors=True)
                c = chaos_run(src, url, args.model, kill_every=args.kill_every,
                              max_kills=args.max_kills, reruns=args.reruns, **job)
                cmp = compare(ref, digests(url), args.images)
                res["chaos"] = {
                    "kill_every_s": args.kill_every, "kills": len(c["kills"]),
                    "mid_shard_kills": c["mid_shard_kills"],
                    "retries": c["retries"], "reruns": len(c["runs"]) - 1,
                    "failed_shards_first_run": c["failed_shards_first_run"],
                    "complete": c["complete"], "seconds": c["seconds"],
                    "ips": args.images / c["seconds"],
                    "first_run_seconds": c["runs"][0]["wall_s"], **cmp}
                res["chaos_over_clean"] = res["chaos"]["ips"] / res["clean"]["ips"]
                ch = res["chaos"]
                print(f"chaos job: {ch['kills']} encoder processes killed ("
                      f"{args.kill_every:g} s after each started working; "
                      f"{ch['mid_shard_kills']} with a shard half-encoded as far as the driver "
                      f"had heard), {ch['retries']} shard retries, "
                      f"{ch['failed_shards_first_run']} shards out of attempts, "
                      f"{ch['reruns']} rerun(s); {ch['seconds']:.1f} s, {ch['ips']:.1f} "
                      f"images/s = {res['chaos_over_clean']:.3f} of the clean job", flush=True)
                print(f"images lost: {ch['lost']} (missing {ch['missing']}, payload differs "
                      f"{ch['differ']}, of {ch['clean_records']}); complete: {ch['complete']}",
                      flush=True)
        finally:
            ray.shutdown()
        res["load_avg_after"] = os.getloadavg()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"Ray start {res.get('ray_start_s', 0):.1f} s (not counted); load average before "
          f"{res['load_avg'][0]:.2f}, after {res.get('load_avg_after', (0,))[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    lost = res.get("chaos", {}).get("lost", 0)
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
