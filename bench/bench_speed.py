"""Codec speed: FLOP floor, correctness, decode latency per tier, batch throughput.

Runs on CPU here (``--device cpu``) and on a GPU (``--device cuda``) in one call:

    python bench/bench_speed.py --model cdc-small --device cpu --size 768x512
    python bench/bench_speed.py --model cdc-small --device cuda --precision bf16 --compile

Prints: FLOPs of one U-Net step and of the encoder; the device's measured dense
matmul rate; the floor (FLOPs / rate) for each tier; correctness (symbols equal to
the CPU reference, image within tolerance of the fp32 decode); median latencies,
throughputs and the ratio of measured time to the floor; and the ratio between the
chosen optimisation and plain eager fp32, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from cdc import CDCCodec  # noqa: E402
from cdc.image import array_to_tensor, pad_to_multiple  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s: the compute ceiling the floor is computed against."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = timed(lambda: a @ b, device, repeat=5, warmup=2)
    return 2 * n**3 / t


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def test_image(w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 90 * np.sin(xx / 37), 128 + 90 * np.cos(yy / 23),
                    128 + 60 * np.sin((xx + yy) / 11)], -1) + rng.normal(0, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="cdc-small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="768x512", help="WxH of the test image (Kodak size)")
    ap.add_argument("--tiers", default="preview=1,standard=4,high=16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--precision", default=None, choices=[None, "bf16", "fp16", "fp32"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    w, h = (int(v) for v in args.size.split("x"))
    tiers = {k: int(v) for k, v in (t.split("=") for t in args.tiers.split(","))}
    img = test_image(w, h)

    ref = CDCCodec.from_pretrained(args.model, device="cpu")
    fast = CDCCodec.from_pretrained(args.model, device=device, precision=args.precision)
    fast.optimize(channels_last=args.channels_last, compile=args.compile)
    base = CDCCodec.from_pretrained(args.model, device=device)  # eager fp32 on the same device
    name = (torch.cuda.get_device_name() if device.type == "cuda"
            else f"CPU ({torch.get_num_threads()} threads)")
    print(f"device: {name}; model {ref.model_id} ({ref.weights_sha256[:12]}); "
          f"torch {torch.__version__}")
    print(f"options: precision={args.precision or 'fp32'} channels_last={args.channels_last} "
          f"compile={args.compile}")

    # -- FLOP floor ---------------------------------------------------------------------------
    m = ref.model
    x, _ = pad_to_multiple(array_to_tensor(img), 64)
    with torch.no_grad():
        y = m.g_a(x)
        ctx = m.context(torch.round(y))
        t = torch.zeros(1)
        unet_flops = count_flops(lambda: m.denoiser(x, t, ctx))
        ctx_flops = count_flops(lambda: m.context(torch.round(y)))
        enc_flops = count_flops(lambda: m.g_a(x)) + count_flops(lambda: m.entropy.hyper.h_a(y))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision or "", torch.float32)
    rate = matmul_rate(device, dtype)
    print(f"\nFLOPs at {w}x{h} (padded {x.shape[-1]}x{x.shape[-2]}): "
          f"U-Net step {unet_flops / 1e9:.2f} G, "
          f"context decoder {ctx_flops / 1e9:.2f} G, encoder g_a+h_a {enc_flops / 1e9:.2f} G")
    print(f"measured dense matmul rate ({dtype}): {rate / 1e12:.2f} TFLOP/s")

    # -- correctness ----------------------------------------------------------------------------
    data = fast.compress(img)
    _, y_ref = ref.decode_latent(data)  # raises on any symbol mismatch vs the encoder
    _, y_dev = fast.decode_latent(data)
    assert torch.equal(y_ref, y_dev.cpu()), "latent decoded on the device differs from CPU"
    a = np.asarray(base.decompress(data, steps=tiers[next(iter(tiers))]), np.int16)
    b = np.asarray(fast.decompress(data, steps=tiers[next(iter(tiers))]), np.int16)
    diff = np.abs(a - b)
    print("correctness: symbols equal to CPU reference: yes; "
          f"image vs fp32 eager: max |Δ| {diff.max()}, "
          f"mean |Δ| {diff.mean():.3f} (8-bit levels)")

    # -- timings -------------------------------------------------------------------------------
    print(f"\n{'tier':<10}{'steps':>6}{'floor ms':>10}{'eager ms':>10}{'opt ms':>10}"
          f"{'opt/floor':>10}{'eager/opt':>10}")
    for tier, steps in tiers.items():
        floor = (enc_flops * 0 + ctx_flops + steps * unet_flops) / rate
        t_base = timed(lambda steps=steps: base.decompress(data, steps=steps), device, args.repeat)
        t_fast = timed(lambda steps=steps: fast.decompress(data, steps=steps), device, args.repeat)
        print(f"{tier:<10}{steps:>6}{floor * 1e3:>10.1f}{t_base * 1e3:>10.1f}{t_fast * 1e3:>10.1f}"
              f"{t_fast / floor:>10.2f}{t_base / t_fast:>10.2f}")

    imgs = [test_image(w, h) for _ in range(args.batch)]
    streams = fast.compress_batch(imgs)
    steps = tiers.get("standard", next(iter(tiers.values())))
    t_dec = timed(lambda: fast.decompress_batch(streams, steps=steps), device, args.repeat)
    t_enc = timed(lambda: fast.compress_batch(imgs), device, args.repeat)
    t_enc_base = timed(lambda: base.compress_batch(imgs), device, args.repeat)
    enc_floor = args.batch * enc_flops / rate
    print(f"\nbatched decode ({args.batch} images, {steps} steps): "
          f"{args.batch / t_dec:.2f} images/s")
    print(f"batched encode ({args.batch} images): {args.batch / t_enc:.2f} images/s "
          f"(eager fp32 {args.batch / t_enc_base:.2f}); "
          f"encode time / FLOP floor {t_enc / enc_floor:.1f}")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
