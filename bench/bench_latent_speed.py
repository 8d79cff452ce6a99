r"""Latent CDC speed on one image: encode, decode at each tier, against cdc-small's decode
in the same run (CPU here; ``--device cuda`` where a GPU is lent).

    python bench/bench_latent_speed.py --model lcdc-q2 --steps 4 \
        --image ../shared/data/kodak/kodim23.png

Prints median seconds of encode and of each tier's decode (the model's recommended
tiers, else steps 1/2/4), the TAEF2 share of each (encode/decode of the frozen space
alone), and the ratio to cdc-small's decode at its own standard tier, measured in the
same process (Kodak is a benchmark input here, never a training or tuning set).
``--steps 4`` also times decodes at those step counts (γ = 0) beyond the tiers.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cdc.image import array_to_tensor, pad_to_multiple, to_rgb_array  # noqa: E402
from zoo import default_model, load_codec  # noqa: E402


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=default_model())
    p.add_argument("--steps", default="", help="extra step counts to time, e.g. 4,8")
    p.add_argument("--reference", default="cdc-small")
    p.add_argument("--image", default="../shared/data/kodak/kodim23.png")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    img = Image.open(a.image).convert("RGB")
    codec = load_codec(a.model, device=a.device)
    ref = load_codec(a.reference, device=a.device)
    tiers = codec.recommended_tiers() or {f"s{s}": {"steps": s, "gamma": 0.0, "seed": 0}
                                           for s in (1, 2, 4)}
    for st in filter(None, (v.strip() for v in a.steps.split(","))):
        tiers[f"s{st}"] = {"steps": int(st), "gamma": 0.0, "seed": 0}
    print(f"{a.model} on {a.image} ({img.width}x{img.height}), {a.device}, "
          f"{a.threads} threads, median of {a.repeat}")
    with torch.no_grad():
        data = codec.compress(img)
        enc = median_s(lambda: codec.compress(img), a.repeat)
        print(f"encode: {enc:.2f} s, {8 * len(data) / (img.width * img.height):.4f} bpp")
        space = getattr(codec.model, "space", None)
        if space is not None and space.name != "pixel":
            arr, _ = to_rgb_array(img)
            x, _ = pad_to_multiple(array_to_tensor(arr), codec.pad_multiple)
            x = x.to(a.device)
            z = space.encode(x)
            print(f"  of which TAEF2 encode: {median_s(lambda: space.encode(x), a.repeat):.2f} s;"
                  f" TAEF2 decode alone: {median_s(lambda: space.decode(z), a.repeat):.2f} s")
        ref_tier = (ref.recommended_tiers() or {}).get("standard", {"steps": 2, "gamma": 0.8})
        ref_data = ref.compress(img)
        ref_s = median_s(lambda: ref.decompress(ref_data, steps=ref_tier["steps"],
                                                gamma=ref_tier.get("gamma", 0.0)), a.repeat)
        print(f"{a.reference} decode (standard, {ref_tier['steps']} steps): {ref_s:.2f} s")
        for name, t in tiers.items():
            s = median_s(lambda t=t: codec.decompress(data, steps=t["steps"],
                                                      gamma=t.get("gamma", 0.0),
                                                      seed=t.get("seed", 0)), a.repeat)
            print(f"decode {name} ({t['steps']} steps, γ={t.get('gamma', 0.0)}): {s:.2f} s "
                  f"= {s / ref_s:.2f}x {a.reference}'s standard decode")


if __name__ == "__main__":
    main()
