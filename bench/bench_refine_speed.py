"""Speed of the refine codec on one image (default: Kodak kodim23), one run, one machine.

Prints, in one run: AVIF encode of the image at the quality our base layer chose (Pillow,
the same settings), our encode (rate search + one decoder pass per stored path), our
decode per tier in-process, and ``cdc decompress`` end to end as a user runs it (a new
process: interpreter start, imports, weights, decode, PNG write) for the preview and the
standard tier, with the ONNX decoder (``--engine onnx``) and with torch, alternating; and
whether torch and CompressAI were imported on each path. Targets (issue 24):
encode ≤ 1.5 × AVIF encode + one decoder pass per tier; end-to-end standard ≤ 3 s;
preview ≤ 0.2 s after start-up.

    OMP_NUM_THREADS=2 python bench/bench_refine_speed.py --model refine-avif --rate 0.15
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="../shared/data/kodak/kodim23.png")
    p.add_argument("--model", default="refine-avif")
    p.add_argument("--rate", type=float, default=0.15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from cdc.refine import base_layer
    from cdc.refine.stream import parse
    from zoo import load_codec

    img = Image.open(a.image).convert("RGB")
    codec = load_codec(a.model).with_rate(a.rate)
    best = lambda f: min(f() for _ in range(a.repeat))  # noqa: E731

    def timed(fn):
        codec.forget_condition()  # cold: no base latent kept from the last run
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    data = codec.compress(img)
    q = parse(data)
    import numpy as np

    arr = np.asarray(img)
    t_avif = best(lambda: timed(lambda: base_layer.encode(arr, q.quality, q.scale, codec.config)))
    t_enc = best(lambda: timed(lambda: codec.compress(img)))
    tiers = codec.recommended_tiers()
    def decode_time(t: dict) -> float:
        return best(lambda: timed(lambda: codec.decompress(
            data, steps=t["steps"], gamma=t["gamma"], seed=t.get("seed", 0))))

    t_dec = {n: decode_time(t) for n, t in tiers.items()}
    passes = sum(t["steps"] for t in tiers.values())
    print(f"image {a.image} {img.width}x{img.height}, {len(data)} bytes = "
          f"{8 * len(data) / (img.width * img.height):.4f} bpp (target {a.rate}), "
          f"base AVIF q{q.quality} x{q.scale}, {a.threads} threads")
    print(f"AVIF encode at that quality: {t_avif:.3f} s; our encode: {t_enc:.3f} s "
          f"(ratio {t_enc / t_avif:.1f}; {len(codec.paths)} paths, {passes} decoder passes)")
    for n, t in t_dec.items():
        print(f"decode {n} ({tiers[n]['steps']} steps): {t:.3f} s in-process")
    target = 1.5 * t_avif + sum(t_dec[n] for n, t in tiers.items() if t["steps"])
    print(f"encode against its target (1.5 x AVIF encode + one decoder pass per tier): "
          f"{t_enc:.3f} s vs {target:.3f} s (ratio {t_enc / target:.2f})")
    from zoo.onnx_graphs import load_onnx_decoder

    fast = load_onnx_decoder(a.model, threads=a.threads)
    if fast is not None:
        for n in ("preview", "standard"):
            k = tiers[n]["steps"]
            t_fast = best(lambda k=k: timed(lambda: fast.decompress(data, steps=k)))
            print(f"decode {n}, ONNX decoder: {t_fast:.3f} s in-process "
                  f"(torch: {t_dec[n]:.3f} s, ratio {t_dec[n] / t_fast:.2f})")
        from cdc import tiling

        k = tiers["standard"]["steps"]
        area_rule = tiling.whole
        by_side = lambda h, w, tile, margin: h <= tile + 2 * margin and w <= tile + 2 * margin  # noqa: E731
        side_times, area_times = [], []
        try:  # the rule until 2026-12-06 (tile whenever a side exceeds a tile + margins) and
            for _ in range(2 * a.repeat + 1):  # today's, alternating: load drifts hit both
                tiling.whole = by_side
                side_times.append(timed(lambda: fast.decompress(data, steps=k)))
                tiling.whole = area_rule
                area_times.append(timed(lambda: fast.decompress(data, steps=k)))
        finally:
            tiling.whole = area_rule
        t_side, t_area = min(side_times), min(area_times)
        print(f"decode standard, ONNX decoder, tiles by side: {t_side:.3f} s; by area (today): "
              f"{t_area:.3f} s (best of {len(area_times)}, alternating); ratio "
              f"{t_side / t_area:.2f}")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "x.cdc"
        src.write_bytes(data)
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
        probe = ("import sys, runpy; sys.argv = ['cdc', 'decompress', '{src}', '{dst}', "
                 "'--steps', '{steps}', '--engine', '{engine}']; "
                 "import jobs.cli as c\ntry:\n    c.main()\nexcept SystemExit:\n    pass\n"
                 "print('torch imported:', 'torch' in sys.modules, "
                 "'compressai imported:', 'compressai' in sys.modules)")
        def start_up() -> float:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import jobs.cli"], env=env, check=True)
            return time.perf_counter() - t0

        starts = [start_up()]
        engines = ("onnx", "torch") if fast is not None else ("torch",)
        for name in ("preview", "standard"):
            steps = tiers[name]["steps"]
            times: dict[str, list[float]] = {e: [] for e in engines}
            notes = {}
            for _ in range(a.repeat):  # the engines alternate, so load drifts hit both
                if name == "preview":  # and with start-up alone, for "after start-up"
                    starts.append(start_up())
                for engine in engines:
                    t = time.perf_counter()
                    r = subprocess.run([sys.executable, "-c", probe.format(
                        src=src, dst=Path(d) / f"{name}.png", steps=steps, engine=engine)],
                        capture_output=True, text=True, env=env)
                    times[engine].append(time.perf_counter() - t)
                    notes[engine] = (r.stdout.strip().splitlines() or [r.stderr.strip()])[-1]
            if name == "preview":
                print(f"process start + `import jobs.cli` alone: best {min(starts):.2f} s of "
                      f"{len(starts)}")
            for engine in engines:
                print(f"cdc decompress end to end, {name}, --engine {engine}: best "
                      f"{min(times[engine]):.2f} s of {a.repeat} ({notes[engine]})")
            if name == "preview" and "onnx" in times:
                print(f"  preview after start-up (best end to end - best start-up): "
                      f"{min(times['onnx']) - min(starts):.2f} s (target <= 0.2 s)")
            if len(engines) == 2:
                print(f"  end to end, {name}: torch / onnx = "
                      f"{min(times['torch']) / min(times['onnx']):.2f}")

if __name__ == "__main__":
    main()
