"""DiffC benchmark: speed, bytes vs the KL bound, and rate–distortion vs bytes read.

On Kodak crops (evaluation only): encode/decode time for a 64×64 and a 256×256
crop; the stream payload vs the sum of per-step KLs (the reverse-channel coding
overhead); PSNR of the image decoded from growing prefixes of each stream, for
probability-flow (DDIM η=0, 4 steps), the one-shot denoised estimate (1 step) and
ancestral (η=1, 4 steps) reconstruction; and two baselines at the same crops: the
same codec with an untrained prior (ε̂ ≡ 0, i.e. no learned prior) and JPEG.

    OMP_NUM_THREADS=1 python bench/bench_diffc.py                      # ldiffc-small
    python bench/bench_diffc.py --model diffc-small --crop 64         # the pixel model
    python bench/bench_diffc.py --run-dir runs/diffc-small      # EMA weights of a run

``--decode-cost`` instead measures, per whole Kodak image and candidate scheme (issue 26:
"mt19937" draws all 2^k candidates of every chunk to decode, "philox" only the chosen
ones), the encode time (and its share in the candidate search) and, per prefix budget, the
decode time and the decode's peak resident memory (VmHWM, reset before each decode):

    nice -n 15 env OMP_NUM_THREADS=2 python bench/bench_diffc.py --decode-cost \
        --images kodim03.png kodim23.png --budgets 0.1,0.5,1,0 --json cost.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cdc.diffc.codec import DiffCCodec  # noqa: E402
from cdc.diffc.model import DiffCConfig  # noqa: E402

MODES = {"flow4": (4, 0.0), "denoise": (1, 0.0), "ancestral4": (4, 1.0)}


def psnr(a, b) -> float:
    mse = ((np.asarray(a).astype(np.float64) - np.asarray(b).astype(np.float64)) ** 2).mean()
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def load(args) -> DiffCCodec:
    if args.run_dir:
        from pipeline.training.train_diffc import prior_from_run

        prior, ck, _ = prior_from_run(args.run_dir)  # checkpoint.pt or a relay artifact
        print(f"run {args.run_dir}: step {ck['step']}")
        return DiffCCodec(prior, f"{args.run_dir}@{ck['step']}", "00" * 32)
    return DiffCCodec.from_pretrained(args.model)


def untrained(cfg: DiffCConfig) -> DiffCCodec:
    """The trivial baseline: same codec, fresh prior (zero-initialised output: ε̂ ≡ 0)."""
    torch.manual_seed(0)
    from pipeline.training.train_diffc import prior_for

    return DiffCCodec(prior_for(cfg), "untrained", "11" * 32)


def crops(root: str, names: list[str], size: int) -> list[np.ndarray]:
    out = []
    for n in names:
        arr = np.asarray(Image.open(f"{root}/{n}").convert("RGB"))
        h, w = arr.shape[:2]
        if not size:  # the whole image
            out.append(np.ascontiguousarray(arr))
            continue
        top, left = (h - size) // 2, (w - size) // 2
        out.append(np.ascontiguousarray(arr[top : top + size, left : left + size]))
    return out


def rd_curve(codec: DiffCCodec, images: list[np.ndarray], every: int, **enc) -> dict:
    """Mean bpp read and PSNR per mode at prefix cut j (steps 0..j−1 received)."""
    rows: dict[int, dict] = {}
    kl = payload = total = 0.0
    for img in images:
        data, rep = codec.encode(img, **enc)
        kl += sum(rep["kl_bits"])
        payload += 8 * sum(rep["step_bytes"])
        total += 8 * len(data)
        offsets = codec.step_offsets(data)
        cuts = sorted(set(range(0, len(offsets), every)) | {len(offsets) - 1})
        px = img.shape[0] * img.shape[1]
        for j in cuts:
            n = offsets[j] if j < len(offsets) - 1 else len(data)
            r = rows.setdefault(j, {"bpp": 0.0, **{m: 0.0 for m in MODES}})
            r["bpp"] += 8 * n / px / len(images)
            for m, (steps, gamma) in MODES.items():
                r[m] += psnr(codec.decompress(data, steps=steps, gamma=gamma, max_bytes=n),
                             img) / len(images)
    return {"rows": rows, "payload_over_kl": payload / kl, "total_over_kl": total / kl,
            "kl_bpp": kl / sum(i.shape[0] * i.shape[1] for i in images)}


def jpeg_curve(images: list[np.ndarray]) -> list[tuple[int, float, float]]:
    out = []
    for q in (5, 10, 20, 30, 50, 70, 90, 95):
        bpp = p = 0.0
        for img in images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=q)
            bpp += 8 * buf.tell() / (img.shape[0] * img.shape[1]) / len(images)
            p += psnr(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), img) / len(images)
        out.append((q, bpp, p))
    return out


def timing(codec: DiffCCodec, img: np.ndarray, **enc) -> dict:
    t = time.perf_counter()
    data, _ = codec.encode(img, **enc)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    codec.decompress(data, steps=4, gamma=0.0)
    t_dec = time.perf_counter() - t
    t = time.perf_counter()
    codec.decompress(data, max_bytes=codec.step_offsets(data)[len(codec.step_offsets(data)) // 2],
                     steps=4)
    t_half = time.perf_counter() - t
    return {"size": f"{img.shape[1]}x{img.shape[0]}", "encode_s": t_enc, "decode_s": t_dec,
            "decode_half_prefix_s": t_half, "bytes": len(data),
            "bpp": 8 * len(data) / img[..., 0].size}


def _reset_peak_rss() -> None:
    """Linux: reset VmHWM (the peak resident set) of this process."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def decode_cost(codec: DiffCCodec, names: list[str], images: list[np.ndarray],
                budgets: list[float], schemes: list[str], cache: str | None = None,
                **enc) -> list[dict]:
    """Per image and scheme: encode time (candidate search vs the rest) and, per prefix
    budget (bpp; 0 = the whole stream), decode time, peak RSS and PSNR of the decode. With
    ``cache``, streams are kept in (and taken from: no encode time then) that folder."""
    import os

    from cdc.diffc import rcc
    from cdc.diffc.codec import prefix_length

    search = {"s": 0.0}
    encode0 = rcc.encode

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return encode0(*a, **k)
        finally:
            search["s"] += time.perf_counter() - t

    rows = []
    rcc.encode = timed
    try:
        for name, img in zip(names, images):
            for scheme in schemes:
                search["s"] = 0.0
                path = cache and os.path.join(cache, f"{codec.model_id}-{name}-{scheme}.cdc")
                px = img.shape[0] * img.shape[1]
                if path and os.path.exists(path):
                    data = open(path, "rb").read()
                    row = {"image": name, "scheme": scheme, "bytes": len(data),
                           "bpp": 8 * len(data) / px, "encode_s": None,
                           "encode_search_s": None, "decodes": []}
                else:
                    t = time.perf_counter()
                    data, rep = codec.encode(img, candidates=scheme, **enc)
                    t_enc = time.perf_counter() - t
                    row = {"image": name, "scheme": scheme, "bytes": len(data),
                           "bpp": 8 * len(data) / px, "kl_bits": sum(rep["kl_bits"]),
                           "encode_s": t_enc, "encode_search_s": search["s"], "decodes": []}
                    if path:
                        os.makedirs(cache, exist_ok=True)
                        with open(path, "wb") as f:
                            f.write(data)
                for b in budgets:
                    n = prefix_length(data, bpp=b) if b else len(data)
                    _reset_peak_rss()
                    base = _peak_rss_mb()
                    t, cpu = time.perf_counter(), time.process_time()
                    out = codec.decompress(data, max_bytes=n)
                    dt, cpu = time.perf_counter() - t, time.process_time() - cpu
                    row["decodes"].append({"budget_bpp": b, "bpp_read": 8 * n / px,
                                           "decode_s": dt, "decode_cpu_s": cpu,
                                           "peak_rss_mb": _peak_rss_mb(),
                                           "rss_before_mb": base, "psnr": psnr(out, img)})
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        rcc.encode = encode0
    return rows


def print_cost(rows: list[dict]) -> None:
    print(f"\n{'image':<12}{'scheme':<9}{'bpp':>7}{'encode s':>10}{'search s':>10}"
          f"{'budget':>8}{'bpp read':>10}{'decode s':>10}{'peak MB':>9}{'PSNR':>7}")
    for r in rows:
        for d in r["decodes"]:
            enc_s, search_s = r["encode_s"], r["encode_search_s"]
            print(f"{r['image']:<12}{r['scheme']:<9}{r['bpp']:>7.3f}"
                  f"{'-' if enc_s is None else f'{enc_s:.1f}':>10}"
                  f"{'-' if search_s is None else f'{search_s:.1f}':>10}"
                  f"{d['budget_bpp'] or 'all':>8}"
                  f"{d['bpp_read']:>10.3f}{d['decode_s']:>10.2f}{d['peak_rss_mb']:>9.0f}"
                  f"{d.get('psnr', float('nan')):>7.2f}")


def print_curve(name: str, res: dict) -> None:
    print(f"\n{name}: KL {res['kl_bpp']:.3f} bpp, payload/KL {res['payload_over_kl']:.3f}, "
          f"bytes/KL {res['total_over_kl']:.3f}")
    print(f"{'cut':>4}{'bpp read':>10}" + "".join(f"{m:>12}" for m in MODES))
    for j, r in sorted(res["rows"].items()):
        print(f"{j:>4}{r['bpp']:>10.3f}" + "".join(f"{r[m]:>12.2f}" for m in MODES))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ldiffc-small")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--kodak", default="../shared/data/kodak")
    ap.add_argument("--images", nargs="+", default=["kodim03.png", "kodim07.png", "kodim15.png",
                                                     "kodim23.png"])
    ap.add_argument("--crop", type=int, default=64,
                    help="crop side for the RD curve (0: whole image)")
    ap.add_argument("--timing-sizes", default="64,256",
                    help="crop sides timed, comma list; 0 is the whole image")
    ap.add_argument("--every", type=int, default=2, help="prefix cut every N steps")
    ap.add_argument("--chunk-kl", type=float, default=None)
    ap.add_argument("--index-bits", type=int, default=None)
    ap.add_argument("--index-coding", choices=["fixed", "zipf"], default=None)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--baselines", default="untrained,jpeg", help="comma list; '' for none")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--candidates", choices=["philox", "mt19937"], default=None,
                    help="candidate scheme the encoder writes (default: the model's)")
    ap.add_argument("--decode-cost", action="store_true",
                    help="only: encode/decode time and decode peak memory per scheme and "
                         "prefix budget, on whole images")
    ap.add_argument("--budgets", default="0.1,0.5,1,0",
                    help="--decode-cost prefix budgets in bpp, 0 = whole stream")
    ap.add_argument("--schemes", default="mt19937,philox", help="--decode-cost schemes")
    ap.add_argument("--stream-cache", default=None,
                    help="--decode-cost: keep streams here and reuse them (no re-encode)")
    args = ap.parse_args(argv)

    codec = load(args)
    enc = {k: v for k, v in (("chunk_kl_bits", args.chunk_kl),
                             ("chunk_index_bits", args.index_bits),
                             ("index_coding", args.index_coding),
                             ("candidates", args.candidates)) if v is not None}
    print(f"torch threads {torch.get_num_threads()}; encoder settings "
          f"{enc or 'model defaults'} (chunk KL {codec.config.chunk_kl_bits} bits, "
          f"k {codec.config.chunk_index_bits}, {codec.config.index_coding})")
    result: dict = {"model": codec.model_id, "encoder": enc}
    if args.decode_cost:
        enc.pop("candidates", None)
        rows = decode_cost(codec, args.images, crops(args.kodak, args.images, 0),
                           [float(b) for b in args.budgets.split(",")],
                           args.schemes.split(","), args.stream_cache, **enc)
        print_cost(rows)
        result["decode_cost"] = rows
        result["threads"] = torch.get_num_threads()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        return 0
    if not args.skip_timing:
        result["timing"] = []
        for size in (int(v) for v in args.timing_sizes.split(",") if v.strip()):
            r = timing(codec, crops(args.kodak, [args.images[0]], size)[0], **enc)
            result["timing"].append(r)
            print(f"{r['size']:>8}: encode {r['encode_s']:.2f}s  decode (full, flow 4) "
                  f"{r['decode_s']:.2f}s  decode (half prefix) {r['decode_half_prefix_s']:.2f}s  "
                  f"{r['bytes']} bytes ({r['bpp']:.3f} bpp)")
    images = crops(args.kodak, args.images, args.crop)
    result["trained"] = rd_curve(codec, images, args.every, **enc)
    what = f"{args.crop}px crops" if args.crop else "images (whole)"
    print_curve(f"{codec.model_id} on {len(images)} Kodak {what}", result["trained"])
    baselines = [b for b in args.baselines.split(",") if b]
    if "untrained" in baselines:
        result["untrained"] = rd_curve(untrained(codec.config), images, args.every, **enc)
        print_curve("baseline: untrained prior (eps_hat = 0)", result["untrained"])
    if "jpeg" in baselines:
        result["jpeg"] = jpeg_curve(images)
        print("\nbaseline: JPEG (PIL, 4:2:0)")
        for q, bpp, p in result["jpeg"]:
            print(f"  q={q:<3} {bpp:.3f} bpp  {p:.2f} dB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
