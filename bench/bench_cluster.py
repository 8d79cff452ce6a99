"""Scaling of `cdc archive --address` on a real Ray cluster started with the `ray` CLI.

    python bench/bench_cluster.py                    # 200 images of 128x128, cdc-small shapes
    python bench/bench_cluster.py --images 200 --size 128x128 --json out.json

On this machine (tests/ray_cli_cluster.py: loopback, token authentication, own temp dir and
ports, torn down at the end): ``ray start --head --num-cpus 1``, an archive job of
``--images`` generated PNGs joining it with ``--address`` (one actor: the node's CPU);
then a second node ``ray start --address ... --num-cpus 1`` and the same job into a fresh
archive (two actors, one per node); then the one-actor job again on the two-node cluster
(``--actors 1``), so a change of load during the run shows. Each job runs in this process as
``cdc archive`` runs it (``run_archive_job``, the token from ``RAY_AUTH_TOKEN_PATH``).

Printed per job: images/s end to end (planning, joining, actor start-up with torch and the
model, reading, encoding, commits) and in steady state (from the first progress event to
the last), nodes used; then the 2-node / 1-node ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from bench.bench_jobs import random_weights  # noqa: E402
from bench.streams import smooth_image  # noqa: E402
from tests.ray_cli_cluster import RayCliCluster  # noqa: E402


def job(address: str, src: Path, url: str, model: str, actors: int | None, args) -> dict:
    from jobs.encode import ArchiveJobConfig, run_archive_job
    from pipeline.archive import EncodeOptions

    events: list[tuple[float, int]] = []

    def on_event(ev: dict) -> None:
        if ev["type"] == "progress":
            events.append((time.perf_counter(), ev["images"]))

    cfg = ArchiveJobConfig(src=str(src), url=url, model=model, address=address, actors=actors,
                           gpus_per_actor=0, shard_size=args.shard_size, progress=False,
                           options=EncodeOptions(batch_size=args.batch_size))
    t = time.perf_counter()
    s = run_archive_job(cfg, on_event=on_event)
    end = time.perf_counter()
    assert s["images"]["ok"] == args.images and s["complete"], s["failures"][:3]
    steady = (sum(n for _, n in events[1:]) / (events[-1][0] - events[0][0])
              if len(events) > 1 and events[-1][0] > events[0][0] else 0.0)
    return {"actors": s["ray"]["actors"], "nodes_used": s["ray"]["nodes_used"],
            "seconds": end - t, "ips": args.images / (end - t), "steady_ips": steady,
            "ray_start_s": s["timing"]["ray_start_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", default="128x128", help="WxH of the generated images")
    ap.add_argument("--config", default="cdc-small", help="random-init model of these shapes")
    ap.add_argument("--shard-size", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still tear the cluster down
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    w, h = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-cluster-"))
    res: dict = {"images": args.images, "size": args.size, "config": args.config,
                 "load_before": os.getloadavg(), "runs": {}}
    try:
        src = work / "images"
        src.mkdir()
        for i in range(args.images):
            Image.fromarray(smooth_image(h, w, i)).save(src / f"img{i:04d}.png")
        model = random_weights(args.config, work / f"{args.config}.pt")
        with RayCliCluster(work / "ray") as cluster:
            os.environ.update({k: v for k, v in cluster.env().items()
                               if k.startswith("RAY_AUTH") or k == "OMP_NUM_THREADS"})
            t = time.perf_counter()
            cluster.start_node(cpus=1)
            res["head_start_s"] = time.perf_counter() - t
            plan = [("1 node", None, False), ("2 nodes", None, True),
                    ("2 nodes, --actors 1", 1, False)]
            for name, actors, add_node in plan:
                if add_node:
                    t = time.perf_counter()
                    cluster.start_node(cpus=1)
                    res["node_start_s"] = time.perf_counter() - t
                r = job(cluster.address, src, str(work / f"{len(res['runs'])}.zarr"), model,
                        actors, args)
                res["runs"][name] = r
                print(f"{name}: {r['actors']} actor(s) on {r['nodes_used']} node(s), "
                      f"{r['seconds']:.1f} s, {r['ips']:.2f} images/s end to end, "
                      f"{r['steady_ips']:.2f} steady", flush=True)
        one, two, again = (res["runs"][k] for k in ("1 node", "2 nodes", "2 nodes, --actors 1"))
        res["ratios"] = {"2 nodes / 1 node, end to end": two["ips"] / one["ips"],
                         "2 nodes / 1 node, steady": two["steady_ips"] / one["steady_ips"],
                         "2 nodes / 1 actor after, end to end": two["ips"] / again["ips"],
                         "2 nodes / 1 actor after, steady": two["steady_ips"] / again["steady_ips"]}
        res["load_after"] = os.getloadavg()
        for k, v in res["ratios"].items():
            print(f"{k}: {v:.2f}x")
        print(f"load average before {res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f}"
              f" (2 cores); head start {res['head_start_s']:.1f} s, node start "
              f"{res['node_start_s']:.1f} s")
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
