"""Train refine configs on a lent GPU machine, inside one device call, and bring back relays.

Run on the machine, in the checkout's copy, after the kit's wheels are installed
(docs/gpu-training.md has the whole command):

    python3 -m pipeline.training.gpu_run --seconds 540 --out "$OUT" configs/gpu/*.yaml

A lease is 15 minutes of device time in all, start-up included, and one command at most 10:
so everything happens in one call, against a wall-clock budget, and nothing is left to a
second try. In that call:

1. the pair cache is built from the kit's photos (``workers`` processes make the AVIF bases
   on the machine's cores; each finished shard's TAEF2 latents are encoded on the GPU);
2. every config trains a short **probe** (``--probe-steps``), all at once on the one GPU, to
   measure its speed there beside the others;
3. each config's ``steps`` is set to what its measured speed reaches in the time left (so its
   cosine schedule ends where the run does), and all go on to that, with a time limit too;
4. each run's relay (fp16 EMA + config, the committed form, ≤ 16 MiB) and metrics.csv are
   written to ``--out``; this run's log too (8 files at most come back);
5. then, the relays safe, a short decode benchmark on the device (``--bench-seconds``): the
   first config's model codes the largest kit photo and decodes it at two tiers; the
   figures go to the log.

``--device cpu`` runs the same steps on a CPU (the test runs it on tiny models).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

log = logging.getLogger("gpu_run")
PAIR_KEYS = ("sources", "pair_cache", "pair_crop", "pair_variants", "pair_crops", "pair_rates",
             "validation_split")
MAX_FILES = 8  # what a device call brings back from $OUT
SAVE_MARGIN = 25.0  # seconds kept for the relays and the copy back
PROBE_SHARE = 0.4  # a probe slower than this share of the time left is stopped there,
PROBE_FLOOR = 60.0  # but never sooner (a loaded machine's start-up is slow)


def _configs(paths: list[str]):
    from pipeline.training.train_refine import RefineTrainConfig

    cfgs = [RefineTrainConfig.from_yaml(p) for p in paths]
    for p, c in zip(paths[1:], cfgs[1:]):
        for k in PAIR_KEYS:
            if getattr(c, k) != getattr(cfgs[0], k):
                raise ValueError(f"{p}: {k} differs from {paths[0]}'s; the configs of one "
                                 "run share one pair cache")
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"two configs share a file name: {stems}")
    if 2 * len(paths) + 1 > MAX_FILES:
        raise ValueError(f"{len(paths)} configs: at most {(MAX_FILES - 1) // 2} (a relay and "
                         f"a metrics.csv each, and the log, in {MAX_FILES} files)")
    return cfgs


def preflight(cfgs, paths: list[str], device: str) -> None:
    """What would otherwise fail minutes into the call, checked in its first seconds: the
    device, AVIF in this Pillow (else every photo would be skipped), the sources, each
    config's init_from, and the LPIPS trunk its loss loads."""
    from PIL import features

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device here (use --device cpu for a dry run)")
        log.info("device: %s", torch.cuda.get_device_name(0))
    if not features.check("avif"):
        raise RuntimeError("this Pillow cannot write AVIF (install the kit's wheel first)")
    for p, c in zip(paths, cfgs):
        for src in c.sources:
            if not Path(src).exists():
                raise RuntimeError(f"{p}: source {src} does not exist (pack the kit)")
        if c.init_from and not Path(c.init_from).exists():
            raise RuntimeError(f"{p}: init_from {c.init_from} does not exist")
        if c.pixel_rho > 0 or c.rho > 0:
            from pipeline.metrics.nets import tv_features

            tv_features("vgg16", trunk=c.perceptual_trunk)  # digest-checked


def build_pairs(cfg, workers: int, device: str) -> int:
    """The shared pair cache with its latents; returns the number of pairs."""
    from pipeline.training.refine_latents import build_latents
    from pipeline.training.train_refine import pair_cache_of

    folder = pair_cache_of(cfg, with_latents=True, workers=workers, device=device)
    build_latents(folder, device=device)  # shards an earlier try left without latents
    import numpy as np

    return sum(len(np.load(s)["bpp"]) for s in Path(folder).glob("shard-*.npz"))


def _train_cmd(config: Path, run_dir: Path, args, max_steps: int | None,
               time_limit: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "pipeline.training.gpu_run", "_train", str(config),
           str(run_dir), "--device", args.device, "--threads", str(args.threads)]
    if args.bf16:
        cmd.append("--bf16")
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    if time_limit is not None:
        cmd += ["--time-limit", f"{time_limit:.1f}"]
    return cmd


def _run_all(cmds: list[list[str]], logs: list[Path], timeout: float) -> list[str | None]:
    """Run the commands at once, each stopped (SIGTERM: the trainer checkpoints) if still
    running at ``timeout``; per command None, or its failure as one line naming its log."""
    t0 = time.time()
    procs = [subprocess.Popen(cmd, stdout=open(lg, "a"), stderr=subprocess.STDOUT)
             for cmd, lg in zip(cmds, logs)]
    failures: list[str | None] = []
    for p, lg in zip(procs, logs):
        try:
            rc = p.wait(timeout=max(1.0, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.terminate()
            rc = p.wait(timeout=60)
            if (lg.parent / "metrics.csv").exists() and (lg.parent / "checkpoint.pt").exists():
                rc = 0  # stopped on time, with its checkpoint: what a time limit does
        tail = lg.read_text().strip().splitlines()[-3:] if rc else []
        failures.append(f"{lg}: training exited {rc}: {' | '.join(tail)}" if rc else None)
    return failures


def _speed(run_dir: Path) -> tuple[float, float, int]:
    """(steps/s, seconds in the loop, last step) from a run's metrics.csv, the first logged
    interval (start-up, autotuning) left out where there are more."""
    import csv

    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    if not rows:
        raise RuntimeError(f"{run_dir}: no metrics logged in the probe (raise --probe-steps)")
    rates = [float(r["it_s"]) for r in rows[1:]] or [float(rows[0]["it_s"])]
    return statistics.median(rates), float(rows[-1]["time"]), int(rows[-1]["step"])


def run(args) -> dict:
    t0 = time.time()
    deadline = t0 + args.seconds - (args.bench_seconds + 15 if args.bench_seconds > 0 else 0)
    out = Path(args.out)  # main() made it (the log is there)
    os.environ["CDC_CACHE_DIR"] = str(Path(args.kit, "cache").resolve())
    cfgs = _configs(args.configs)
    preflight(cfgs, args.configs, args.device)
    n_pairs = build_pairs(cfgs[0], args.workers, args.device)
    log.info("pairs: %d in %.0f s", n_pairs, time.time() - t0)
    runs = Path(args.runs)
    dirs = [runs / Path(p).stem for p in args.configs]
    logs = [d / "train.log" for d in dirs]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    t1 = time.time()
    fails = _run_all([_train_cmd(Path(c), d, args, args.probe_steps, None)
                      for c, d in zip(args.configs, dirs)], logs,
                     max(PROBE_FLOOR, PROBE_SHARE * (deadline - time.time() - args.save_margin)))
    if all(fails):
        raise RuntimeError(f"every probe failed; first: {fails[0]}")
    cmds, keep, limits, summary = [], [], [], {}
    left = deadline - time.time() - args.save_margin
    for c, d, fail in zip(args.configs, dirs, fails):
        stem = Path(c).stem
        if fail:
            log.error("probe %s failed: %s", stem, fail)
            summary[stem] = {"error": fail}
            continue
        rate, loop, step = _speed(d)
        overhead = max(0.0, (time.time() - t1) - loop)  # start-up: imports, data, model
        limit = max(5.0, left - overhead - 5.0)
        raw = yaml.safe_load(Path(c).read_text())
        raw["steps"] = max(step + 1, step + int(0.95 * rate * limit))
        cfg_path = d / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        cmds.append(_train_cmd(cfg_path, d, args, None, limit))
        keep.append((c, d))
        limits.append(limit)
        summary[stem] = {"it_s": rate, "start_up_s": round(overhead, 1), "probe_step": step,
                         "planned_steps": raw["steps"]}
        log.info("probe %s: %.2f it/s beside the others, %.0f s start-up, step %d; %d steps "
                 "planned in %.0f s", stem, rate, overhead, step, raw["steps"], limit)
    backstop = max(s["start_up_s"] for s in summary.values() if "start_up_s" in s) + 30
    fails = _run_all(cmds, [d / "train.log" for _, d in keep],
                     max(deadline - time.time(), max(limits) + backstop))
    log.info("probe and training: %.0f s", time.time() - t1)
    for (c, d), fail in zip(keep, fails):
        stem = Path(c).stem
        if fail:  # still bring back what its last checkpoint holds
            log.error("%s failed: %s", stem, fail)
            summary[stem]["error"] = fail
        if (d / "checkpoint.pt").exists():
            summary[stem].update(_bring_back(d, out / stem))
        log.info("%s: %s", stem, summary[stem])
    ok = [d for (c, d) in keep if "error" not in summary[Path(c).stem]]
    if args.bench_seconds > 0 and ok:
        try:  # after the relays are safe: a failure here costs nothing else
            log.info("decode bench: %s", decode_bench(ok[0], cfgs[0].sources, args.device,
                                                      args.bench_seconds))
        except Exception as e:  # noqa: BLE001 - a benchmark must not fail the call
            log.error("decode bench failed: %s: %s", type(e).__name__, e)
    if any("error" in v for v in summary.values()):
        raise RuntimeError("; ".join(f"{k}: {v['error']}" for k, v in summary.items()
                                     if "error" in v))
    log.info("done in %.0f s of %d", time.time() - t0, args.seconds)
    return summary


def _bring_back(run_dir: Path, dest: Path) -> dict:
    """The run's relay and metrics.csv into ``dest`` (two files)."""
    import csv

    from pipeline.training.trainer import save_relay

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        relay = save_relay(run_dir, tmp)
        shutil.copyfile(relay, dest / relay.name)
    shutil.copyfile(run_dir / "metrics.csv", dest / "metrics.csv")
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    last = rows[-1] if rows else {}
    return {"step": int(last.get("step", 0)), "loss": last.get("loss"),
            "psnr_gain": last.get("psnr_gain"), "relay_bytes": (dest / relay.name).stat().st_size}


def decode_bench(run_dir: Path, photos: list[str], device: str, seconds: float,
                 rate: float = 0.15) -> dict:
    """The lent machine's decode speed, once the relays are safe: the run's model (v3's
    relay is the shipped `refine-avif` network) codes the largest kit photo at ``rate`` and
    decodes it at the `standard` and `high` tiers on ``device`` for about ``seconds``."""
    import torch
    from PIL import Image

    from pipeline.sources import list_images
    from pipeline.training.image_crops import read_image
    from pipeline.training.train_refine import pack_run
    from zoo import codec_from_bytes

    urls = list_images(photos)
    sizes = {u: Image.open(u).size for u in urls}
    url = max(urls, key=lambda u: sizes[u][0] * sizes[u][1])
    img = read_image(url).convert("RGB")
    data, _, step = pack_run(run_dir)
    codec = codec_from_bytes(data, str(run_dir), device=device)
    stream = codec.with_rate(rate).compress(img)
    out = {"photo": Path(url).name, "size": list(img.size), "bytes": len(stream),
           "model_step": step, "device": device}
    tiers = {"standard": {"steps": 1, "gamma": 0.0}, "high": {"steps": 1, "gamma": 0.6}}
    for tier, kw in tiers.items():
        codec.decompress(stream, **kw)  # warm-up: kernels chosen, memory allocated
        times, t_end = [], time.time() + seconds / len(tiers)
        while time.time() < t_end or len(times) < 3:
            t = time.perf_counter()
            codec.decompress(stream, **kw)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[f"{tier}_s"] = round(statistics.median(times), 4)
        out[f"{tier}_runs"] = len(times)
    return out


def _train(args) -> None:
    """One config (a subprocess of :func:`run`): train or resume, stop as asked."""
    import torch

    from pipeline.training.train_refine import run_training

    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
        torch.backends.cuda.matmul.allow_tf32 = True
    logging.basicConfig(level=logging.INFO)
    print(run_training(args.config, args.run_dir, device=args.device, bf16=args.bf16,
                       batch_size=args.batch_size, max_steps=args.max_steps,
                       time_limit=args.time_limit), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_train"]:
        ap = argparse.ArgumentParser(prog="gpu_run _train")
        ap.add_argument("cmd")
        ap.add_argument("config")
        ap.add_argument("run_dir")
        ap.add_argument("--device", default="cuda")
        ap.add_argument("--threads", type=int, default=4)
        ap.add_argument("--bf16", action="store_true")
        ap.add_argument("--batch-size", type=int)
        ap.add_argument("--max-steps", type=int)
        ap.add_argument("--time-limit", type=float)
        _train(ap.parse_args(argv))
        return 0
    ap = argparse.ArgumentParser(prog="python3 -m pipeline.training.gpu_run",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", help="refine training configs sharing a pair cache")
    ap.add_argument("--out", required=True, help="where relays and logs go ($OUT)")
    ap.add_argument("--seconds", type=float, default=540, help="wall-clock budget, all in")
    ap.add_argument("--kit", default=".gpu-kit")
    ap.add_argument("--runs", default="runs/gpu", help="run folders (left on the machine)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--threads", type=int, default=4, help="torch threads per training")
    ap.add_argument("--probe-steps", type=int, default=60)
    ap.add_argument("--bench-seconds", type=float, default=20,
                    help="decode benchmark at the end (0: none); its time is kept aside")
    ap.add_argument("--save-margin", type=float, default=SAVE_MARGIN,
                    help="seconds kept at the end for the relays")
    ap.add_argument("--batch-size", type=int, help="override the configs' (a CPU dry run)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(name)s %(message)s")
    handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(out / "gpu_run.log")]
    loggers = [log, logging.getLogger("pipeline")]  # this driver's and the pair builders'
    for lg in loggers:
        lg.setLevel(logging.INFO)
        for h in handlers:
            h.setFormatter(fmt)
            lg.addHandler(h)
    try:
        run(args)
    except (RuntimeError, ValueError, OSError) as e:
        log.error("error: %s", e)
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for lg in loggers:
            for h in handlers:
                lg.removeHandler(h)
        for h in handlers:
            h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
