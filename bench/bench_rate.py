"""Rate accounting: real stream bytes vs the model's own −log2 p estimate.

Target (issue 2): bytes ≤ 1.01 × estimate + 32 (header). Prints per-image rows and
the aggregate ratio measured in this run.

    python bench/bench_rate.py --model cdc-small --images ../shared/data/kodak

``--record "what the images are"`` writes the mean bpp measured here into the shipped
model's registry entry (``rate`` in zoo/models.json, what ``cdc archive --rate`` chooses
by). Record rates measured on training photos, never on the Kodak test set.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)

from cdc import CDCCodec, describe  # noqa: E402
from pipeline.files import read_image  # noqa: E402
from pipeline.sources import list_images  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="cdc-small")
    ap.add_argument("--images", nargs="+", default=["samples"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--stride", type=int, default=1, help="Every n-th image of the listing.")
    ap.add_argument("--record", metavar="DESCRIPTION", default=None,
                    help="Write the mean bpp into the shipped model's registry entry.")
    args = ap.parse_args(argv)

    codec = CDCCodec.from_pretrained(args.model)
    files = list_images(args.images)[:: args.stride][: args.limit]
    tot_bytes = tot_payload = tot_est = tot_hdr = 0.0
    bpps: list[float] = []
    worst = 0.0
    print(f"model {codec.model_id} ({codec.weights_sha256[:12]}), {len(files)} images")
    print(f"{'image':<28}{'bytes':>8}{'est.bytes':>11}{'payload/est':>13}{'header':>8}{'bpp':>8}")
    t0 = time.time()
    for f in files:
        img = read_image(f)
        data = codec.compress(img)
        est = codec.estimate_bits(img) / 8
        info = describe(data)
        payload = len(data) - info["header_bytes"]
        ok = len(data) <= 1.01 * est + 32
        worst = max(worst, (len(data) - 32) / est)
        print(f"{f.rsplit('/', 1)[-1]:<28}{len(data):>8}{est:>11.1f}{payload / est:>13.4f}"
              f"{info['header_bytes']:>8}{info['bpp']:>8.4f}{'' if ok else '  over target'}")
        bpps.append(info["bpp"])
        tot_bytes += len(data)
        tot_payload += payload
        tot_est += est
        tot_hdr += info["header_bytes"]
    n = max(len(files), 1)
    print(f"\naggregate payload/estimate ratio: {tot_payload / tot_est:.4f}")
    print(
        f"aggregate (bytes - 32·n)/estimate: {(tot_bytes - 32 * n) / tot_est:.4f} (target <= 1.01)"
    )
    print(f"worst image (bytes - 32)/estimate: {worst:.4f}")
    print(f"mean header+framing bytes: {tot_hdr / n:.1f} (target <= 32)")
    print(f"time: {time.time() - t0:.1f}s")
    print(f"mean bpp: {sum(bpps) / n:.4f}")
    if args.record:
        from zoo.store import update_entry

        update_entry(args.model, {"rate": {
            "bpp": round(sum(bpps) / n, 4), "images": args.record,
            "measured": time.strftime("%Y-%m-%d") + " (bench/bench_rate.py)",
        }})
        print(f"recorded in the registry entry of {args.model}")
    return 0 if worst <= 1.01 else 1


if __name__ == "__main__":
    sys.exit(main())
