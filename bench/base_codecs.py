"""AVIF against HEIC (x265, through pillow-heif) as the refine codec's base layer, at the same
*payload* bytes, on the validation split (never Kodak): should the base change codec?

Payload: what a bare base would keep — AVIF's av1C bytes and AV1 payload (as the shipped
`base_bare` stores it), HEIC's hvcC box (its parameter sets) and mdat payload (a bare HEIC
would have to rebuild the other boxes as `cdc.refine.bare_avif` does for AVIF). Each codec's
PSNR and LPIPS-VGG are interpolated (linear in log bytes) between the two qualities that
bracket the budget; encode times are Pillow's/pillow-heif's own (x265 may use more threads).

    OMP_NUM_THREADS=1 python bench/base_codecs.py --images 16 --rates 0.06,0.12,0.25,0.5 \
        --out /tmp/base_codecs.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from refine_operating_points import validation_args, validation_photo

Encoded = tuple[int, Callable[[], np.ndarray], float]  # payload bytes, decoder, encode s


def avif(img: Image.Image, q: int, tune: str = "", subsampling: str = "4:2:0",
         **aom: str) -> Encoded:
    from cdc.refine import bare_avif

    t = time.perf_counter()
    buf = io.BytesIO()
    opts = {**({"tune": tune} if tune else {}), **aom}
    extra = {"advanced": opts} if opts else {}
    img.save(buf, format="AVIF", quality=q, speed=6, subsampling=subsampling, **extra)
    dt, data = time.perf_counter() - t, buf.getvalue()
    bare = bare_avif.strip(data, img.width, img.height)
    return (len(bare) if bare is not None else len(data),
            lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), dt)


def _box_payload(data: bytes, tag: bytes) -> int:
    i = data.find(tag)
    if i < 4:
        raise ValueError(f"no {tag!r} box")
    return int.from_bytes(data[i - 4:i], "big") - 8


def heic(img: Image.Image, q: int) -> Encoded:
    import pillow_heif

    t = time.perf_counter()
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, quality=q, chroma=420)
    dt, data = time.perf_counter() - t, buf.getvalue()
    return (_box_payload(data, b"mdat") + _box_payload(data, b"hvcC"),
            lambda: np.asarray(pillow_heif.open_heif(io.BytesIO(data)).to_pillow()
                               .convert("RGB")), dt)


def avif_ssimulacra2(img: Image.Image, q: int) -> Encoded:
    """libaom's SSIMULACRA2 tuning (libaom >= 3.13; libavif's default is ``iq`` since 1.3)."""
    return avif(img, q, "ssimulacra2")


def avif_psnr(img: Image.Image, q: int) -> Encoded:
    return avif(img, q, "psnr")


def avif_grain(img: Image.Image, q: int) -> Encoded:
    """libaom's film-grain path: the source denoised before coding, the grain's parameters
    sent (a few bytes) and synthesised by the decoder (dav1d applies it)."""
    return avif(img, q, **{"denoise-noise-level": "10"})


def avif_444(img: Image.Image, q: int) -> Encoded:
    """Chroma at full resolution."""
    return avif(img, q, subsampling="4:4:4")


CODECS = {"avif": avif, "avif-444": avif_444, "heic": heic, "avif-ssimulacra2": avif_ssimulacra2,
          "avif-psnr": avif_psnr, "avif-grain": avif_grain}


def at_bytes(enc, img: Image.Image, arr: np.ndarray, budget: float, lp
             ) -> dict | None:
    """PSNR / LPIPS-VGG at ``budget`` payload bytes, between the bracketing qualities."""
    lo, hi, below, above = 0, 100, None, None
    while lo <= hi:
        q = (lo + hi) // 2
        e = enc(img, q)
        if e[0] <= budget:
            below, lo = (q, e), q + 1
        else:
            above, hi = (q, e), q - 1
    if below is None or above is None:
        return None
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255

    def metrics(e: Encoded) -> tuple[float, float]:
        y = torch.from_numpy(e[1]().copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            d = float(lp(y, x))
        return 10 * math.log10(1 / max(float(((y - x) ** 2).mean()), 1e-12)), d

    (qa, a), (qb, b) = below, above
    ma, mb = metrics(a), metrics(b)
    t = (math.log(budget) - math.log(a[0])) / (math.log(b[0]) - math.log(a[0]))
    return {"psnr": ma[0] + t * (mb[0] - ma[0]), "lpips_vgg": ma[1] + t * (mb[1] - ma[1]),
            "encode_s": a[2], "qualities": [qa, qb]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    validation_args(ap, 16)
    ap.add_argument("--rates", default="0.06,0.12,0.25,0.5")
    ap.add_argument("--out", default="")
    ap.add_argument("--candidate", default="heic", choices=sorted(set(CODECS) - {"avif"}),
                    help="the base compared with AVIF at libavif's default settings")
    a = ap.parse_args()
    codecs = {"avif": avif, a.candidate: CODECS[a.candidate]}

    from pipeline.metrics.lpips import LPIPS
    from pipeline.training.refine_pairs import read_split

    torch.set_num_threads(1)
    lp = LPIPS("vgg").eval()
    rows = []
    for name in sorted(read_split(a.split))[a.first: a.first + a.images]:
        img = validation_photo(a.root, name)
        arr = np.asarray(img)
        for rate in (float(r) for r in a.rates.split(",")):
            budget = rate * arr.shape[0] * arr.shape[1] / 8
            got = {k: at_bytes(enc, img, arr, budget, lp) for k, enc in codecs.items()}
            if all(got.values()):
                rows.append({"image": name, "rate": rate, **got})
                print(name, rate, {k: {m: round(v, 4) for m, v in g.items() if m != "qualities"}
                                   for k, g in got.items()}, flush=True)
    summary = {}
    for rate in sorted({r["rate"] for r in rows}):
        rs = [r for r in rows if r["rate"] == rate]
        c = a.candidate
        dp = [r[c]["psnr"] - r["avif"]["psnr"] for r in rs]
        dl = [r[c]["lpips_vgg"] / r["avif"]["lpips_vgg"] for r in rs]
        summary[f"{rate:g}"] = {
            "rows": len(rs), "candidate_minus_avif_psnr": float(np.mean(dp)),
            "worst_psnr": float(min(dp)), "best_psnr": float(max(dp)),
            "lpips_vgg_ratio": float(np.mean([r[c]["lpips_vgg"] for r in rs])
                                     / np.mean([r["avif"]["lpips_vgg"] for r in rs])),
            "lpips_vgg_better": int(sum(v < 1 for v in dl)),
            "encode_time_ratio": float(np.mean([r[c]["encode_s"] / r["avif"]["encode_s"]
                                                for r in rs]))}
        print(f"{rate:g}: {json.dumps(summary[f'{rate:g}'])}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
