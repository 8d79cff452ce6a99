"""Ray encode job vs the bare codec, and scaling from 1 to N actors, in one run.

    python bench/bench_jobs.py                      # random-init cdc-small shapes, CPU
    python bench/bench_jobs.py --model cdc-small --images 256 --size 512x384 --max-actors 4

Generates ``--images`` PNG files (smooth gradients + noise, one size so batches stack),
then measures on the same files and the same machine:

* **bare codec**: ``codec.compress_batch`` on images already decoded in memory, in batches
  of ``--batch-size``, one torch thread: the ceiling a job could reach. Also **bare + files**:
  the same loop reading and decoding each PNG first (what a script without Ray would do).
* **job**: ``run_archive_job`` on a Ray session started once beforehand (so Ray's own
  start-up is not counted; it is printed), into a fresh archive each time, with k = 1..N
  actors of one thread each (N = ``--max-actors``). A job's time includes planning,
  starting the actors and loading the model in each, reading and decoding the PNG files,
  encoding, and committing every shard.
* ``--threaded`` adds the bare codec with N torch threads and a job with one N-thread actor.

Printed ratios: job / bare, end to end and in steady state (from the first progress
event to the last), and the k-actor speed-up over one actor. GPU runs: pass ``--gpus-per-actor 1``
on a machine where Ray sees GPUs (actors then use CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

from PIL import Image  # noqa: E402  (after the warnings filter)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench.streams import smooth_image  # noqa: E402  (after the sys.path line)


def random_weights(config: str, path: Path) -> str:
    import torch

    from cdc.models import ConditionalDiffusionCompressor
    from cdc.presets import PRESETS
    from cdc.weights import weights_bytes

    torch.manual_seed(0)
    model = ConditionalDiffusionCompressor(PRESETS[config]).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(40.0)  # spread the latent like a trained model's
    model.update()
    path.write_bytes(weights_bytes(model, config))
    return str(path)


def bare(codec, images: list, batch_size: int, threads: int) -> float:
    """images/s of compress_batch on in-memory images."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        codec.compress_batch(images[:batch_size])  # warm-up
        t = time.perf_counter()
        for i in range(0, len(images), batch_size):
            codec.compress_batch(images[i:i + batch_size])
        return len(images) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)


def bare_files(codec, files: list[Path], batch_size: int) -> float:
    """images/s of read + decode PNG + compress_batch, one thread, no Ray."""
    import torch

    from pipeline.files import read_image

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.perf_counter()
        for i in range(0, len(files), batch_size):
            codec.compress_batch([read_image(f) for f in files[i:i + batch_size]])
        return len(files) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)


def job(src: Path, work: Path, model: str, actors: int, cpus: float, args) -> dict:
    from jobs.encode import ArchiveJobConfig, run_archive_job
    from pipeline.archive import EncodeOptions

    url = str(work / f"bench-{actors}x{cpus:g}.zarr")
    shutil.rmtree(url, ignore_errors=True)
    events: list[tuple[float, int]] = []  # (time, images) of every progress event

    def on_event(ev: dict) -> None:
        if ev["type"] == "progress":
            events.append((time.perf_counter(), ev["images"]))

    cfg = ArchiveJobConfig(src=str(src), url=url, model=model, actors=actors,
                           cpus_per_actor=cpus, gpus_per_actor=args.gpus_per_actor,
                           shard_size=args.shard_size, progress=False,
                           options=EncodeOptions(batch_size=args.batch_size))
    t = time.perf_counter()
    s = run_archive_job(cfg, on_event=on_event)
    end = time.perf_counter()
    assert s["images"]["ok"] == args.images, s["failures"][:3]
    shutil.rmtree(url, ignore_errors=True)
    return {"ips": args.images / (end - t),
            # steady state: images reported after the first progress event, over the time
            # from the first to the last one (no actor start-up, no final commit/summary)
            "steady_ips": (sum(n for _, n in events[1:]) / (events[-1][0] - events[0][0])
                           if len(events) > 1 and events[-1][0] > events[0][0] else 0.0),
            "seconds": end - t, "bpp": s["bpp"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="weights (default: random-init cdc-small)")
    ap.add_argument("--config", default="cdc-small", help="config of the random-init model")
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--size", default="256x256", help="WxH")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--max-actors", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpus-per-actor", type=float, default=None)
    ap.add_argument("--threaded", action="store_true",
                    help="also time N-thread torch (bare and one actor)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from jobs.cluster import quiet_env, use_loopback

    quiet_env()
    use_loopback()
    import ray

    from zoo import load_codec

    w, h = (int(v) for v in args.size.split("x"))
    n = args.max_actors
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-jobs-"))
    try:
        src = work / "images"
        src.mkdir()
        arrays = [smooth_image(h, w, i) for i in range(args.images)]
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(src / f"img{i:05d}.png")
        model = args.model or random_weights(args.config, work / f"{args.config}-random.pt")
        codec = load_codec(model)
        images = [Image.fromarray(a) for a in arrays]
        res: dict = {"date": time.strftime("%Y-%m-%d"), "images": args.images, "size": args.size,
                     "model": codec.model_id, "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
        res["bare_1"] = bare(codec, images, args.batch_size, 1)
        res["bare_files"] = bare_files(codec, sorted(src.iterdir()), args.batch_size)
        if args.threaded:
            res["bare_n"] = bare(codec, images, args.batch_size, n)
        t = time.perf_counter()
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False,
                 object_store_memory=128 * 1024 * 1024, _node_ip_address="127.0.0.1")
        res["ray_start_s"] = time.perf_counter() - t
        try:
            if args.threaded:
                res["job_1xn"] = job(src, work, model, 1, float(n), args)
            res["jobs_kx1"] = {k: job(src, work, model, k, 1.0, args) for k in range(1, n + 1)}
        finally:
            ray.shutdown()
        res["load_avg_after"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    jk = res["jobs_kx1"]
    res["ratios"] = {
        "job(1 actor) / bare codec, end to end": jk[1]["ips"] / res["bare_1"],
        "job(1 actor) / bare codec, steady": jk[1]["steady_ips"] / res["bare_1"],
        "job(1 actor) / bare + files, end to end": jk[1]["ips"] / res["bare_files"],
        "job(1 actor) / bare + files, steady": jk[1]["steady_ips"] / res["bare_files"],
        **{f"job({k} actors) / job(1 actor), end to end": jk[k]["ips"] / jk[1]["ips"]
           for k in range(2, n + 1)},
        **{f"job({k} actors) / job(1 actor), steady": jk[k]["steady_ips"] / jk[1]["steady_ips"]
           for k in range(2, n + 1)},
        **{f"job({k} actors) / ({k} x bare codec), steady":
           jk[k]["steady_ips"] / (k * res["bare_1"])
           for k in range(2, n + 1)},
    }
    if args.threaded:
        j1n = res["job_1xn"]
        res["ratios"][f"job(1 actor x {n} threads) / bare({n} threads), end to end"] = (
            j1n["ips"] / res["bare_n"])
        res["ratios"][f"job(1 actor x {n} threads) / bare({n} threads), steady"] = (
            j1n["steady_ips"] / res["bare_n"])
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return
    print(f"{res['date']}: {args.images} images {args.size}, model {res['model']}, "
          f"{res['cpus']} CPUs, load average before {res['load_avg'][0]:.2f}, after "
          f"{res['load_avg_after'][0]:.2f}; Ray start {res['ray_start_s']:.1f} s (not counted)")
    print(f"bare codec, 1 thread: {res['bare_1']:.2f} images/s")
    print(f"bare codec + reading the files, 1 thread: {res['bare_files']:.2f} images/s")
    if args.threaded:
        j1n = res["job_1xn"]
        print(f"bare codec, {n} threads: {res['bare_n']:.2f} images/s")
        print(f"job, 1 actor x {n} threads: {j1n['ips']:.2f} images/s end to end "
              f"({j1n['seconds']:.1f} s), {j1n['steady_ips']:.2f} steady")
    for k, r in jk.items():
        print(f"job, {k} actor(s) x 1 thread: {r['ips']:.2f} images/s end to end "
              f"({r['seconds']:.1f} s), {r['steady_ips']:.2f} steady")
    for name, v in res["ratios"].items():
        print(f"  {name}: {v:.2f}")


if __name__ == "__main__":
    main()
