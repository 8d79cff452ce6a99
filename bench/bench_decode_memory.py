"""The decode budget's memory estimate against the measured peak, on a large stream.

    python bench/bench_decode_memory.py --model lcdc-q1 --size 4000x3000 --steps 1

For each model: a stream of ``--size`` is written (once; kept in ``--dir``), then decoded
in a fresh process under ``/usr/bin/time -f %M`` (peak resident set, KiB). The child
reports its own peak after loading the model (the baseline: torch, weights) and the
codec's estimate (``check_budget``'s ``alloc_bytes``, the figure the decode budget compares
with ``max_alloc_bytes``). Target: estimate ≥ measured peak − baseline, and within 2×.

The stream is crafted cheaply: encoding a 12-megapixel image would run the TAEF2 encoder
over every pixel (minutes here), and the decode's memory does not depend on what the
latents say. So the space encoder is replaced, for the encode only, by the TAEF2 latents of
a small photo upsampled to the full latent size; every other encoder step (g_a, entropy
coding, the container) is the codec's own, and the decode is the ordinary one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_stream(model: str, h: int, w: int, path: Path) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from bench.streams import smooth_image
    from zoo import load_codec

    torch.set_num_threads(1)
    codec = load_codec(model)
    space = codec.model.space
    small = torch.from_numpy(smooth_image(256, 256, 0)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        z_small = space.encode(small / 127.5 - 1)
    real_encode = space.encode

    def cheap_encode(x):  # the latents of a small photo, at the full latent size
        return F.interpolate(z_small, size=(x.shape[-2] // space.stride,
                                            x.shape[-1] // space.stride), mode="bilinear")

    space.encode = cheap_encode
    try:
        img = Image.fromarray(np.zeros((h, w, 3), np.uint8))  # only its size is used
        data = codec.compress(img)
    finally:
        space.encode = real_encode
    path.write_bytes(data)


def child(model: str, path: str, steps: int, out: str) -> None:
    """Decode ``path`` once; write the baseline peak, the estimate and the time."""
    import resource

    import torch

    from cdc.bitstream import Container
    from cdc.limits import DecodeBudget
    from zoo import load_codec

    torch.set_num_threads(1)
    codec = load_codec(model)
    data = Path(path).read_bytes()
    seen = {}

    class Spy(DecodeBudget):  # records what check_budget asks for
        def check(self, what, **needs):
            if "steps" in needs:
                seen.update(needs)
            return super().check(what, **needs)

    codec.budget = Spy(**DecodeBudget.unlimited().to_dict())
    c = Container.unpack(data)
    codec.check_budget(c, steps) if hasattr(codec, "check_budget") else None
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    img = codec.decompress(data, steps=steps)
    sec = time.perf_counter() - t
    Path(out).write_text(json.dumps({"baseline_kib": base_kib, "estimate": seen.get(
        "alloc_bytes"), "decode_s": sec, "size": img.size,
        "peak_kib_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lcdc-q1", help="comma-separated")
    ap.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--dir", default="/tmp/bench-decode-memory")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        m, p, s, o = args.child
        child(m, p, int(s), o)
        return
    w, h = (int(v) for v in args.size.lower().split("x"))
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.model.split(","):
        path = d / f"{model}-{w}x{h}.cdc"
        if not path.exists():
            t = time.perf_counter()
            make_stream(model, h, w, path)
            print(f"{model}: wrote {path} ({path.stat().st_size} B) in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        out = d / f"{model}-{w}x{h}.json"
        cmd = ["/usr/bin/time", "-f", "%M", sys.executable, __file__, "--child", model,
               str(path), str(args.steps), str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            raise SystemExit(f"{model}: decode failed\n{r.stderr[-3000:]}")
        peak_kib = int(r.stderr.strip().splitlines()[-1])
        res = json.loads(out.read_text())
        est = res["estimate"]
        used = (peak_kib - res["baseline_kib"]) * 1024
        row = {"model": model, "size": f"{w}x{h}", "steps": args.steps,
               "estimate_bytes": est, "peak_bytes": peak_kib * 1024,
               "baseline_bytes": res["baseline_kib"] * 1024, "decode_bytes": used,
               "estimate_over_decode": est / used if used > 0 else None,
               "decode_s": res["decode_s"]}
        rows.append(row)
        ok = est >= used and est <= 2 * used
        print(f"{model} {w}x{h} steps {args.steps}: estimate {est / 2**30:.2f} GiB; measured "
              f"peak {peak_kib / 2**20:.2f} GiB = baseline {res['baseline_kib'] / 2**20:.2f} + "
              f"decode {used / 2**30:.2f} GiB; estimate/decode {row['estimate_over_decode']:.2f} "
              f"({'within' if ok else 'OUTSIDE'} [1, 2]); decode {res['decode_s']:.0f} s",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
