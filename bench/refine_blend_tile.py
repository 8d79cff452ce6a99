"""How much finer blend tiles would buy: the standard tier's per-tile bound applied on 64-px
tiles (the shipped models' ``tile``) and on smaller ones, to the same refined output of the
same base, on the validation split (never Kodak), PSNR and LPIPS-VGG only.

Finer tiles let the encoder keep the refinement where it is cheap and drop it where it costs,
at more side bytes (3 bits a tile, deflated): this prints both, the gain as an upper bound
(the extra bytes are not taken from the base layer here), so a small gain closes the question
without a new stream field.

    python bench/refine_blend_tile.py refine-avif --images 12 --rates 0.03,0.06,0.12,0.25 \
        --root /work/shared/data/train --split ../configs/validation-split.txt
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
from refine_grid import bound_arg, print_row, psnr_and_lpips, validation_bases
from refine_operating_points import load_codec_from, validation_args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, relay folder or model name")
    validation_args(ap, 12)
    ap.add_argument("--rates", default="0.03,0.06,0.12,0.25")
    ap.add_argument("--tiles", default="64,32,16")
    bound_arg(ap)
    ap.add_argument("--out", default="", help="a JSON file for the rows and summary")
    a = ap.parse_args()

    from cdc.refine import blend
    from cdc.refine.weights_section import _pack_indices
    from pipeline.metrics.lpips import LPIPS

    codec, step = load_codec_from(a.model)
    cfg = codec.config
    bound = cfg.bound_db if a.bound is None else a.bound
    tiles = [int(t) for t in a.tiles.split(",")]
    bits = int(np.log2(len(cfg.table)))
    measure = functools.partial(psnr_and_lpips, LPIPS("vgg"))
    print(f"# {a.model} (step {step}), standard tier at {bound} dB, tiles {tiles}", flush=True)
    rows = []
    for name, rate, x, base in validation_bases(a, codec):
        h, w = x.shape[-2:]
        ref = codec.refine(base, 1, 0.0, 0)
        row = {"image": name, "rate": rate, "stream_bytes": rate * h * w / 8}
        for t in tiles:
            idx, y = blend.bounded(x, base, ref, cfg.table, t, bound)
            row[f"psnr_{t}"], row[f"lpips_vgg_{t}"] = measure(y, x)
            row[f"index_bytes_{t}"] = len(_pack_indices(tuple(int(i) for i in idx.flatten()),
                                                       bits)[1])
        rows.append(row)
        print_row(row)
    summary = {"model": a.model, "step": step, "bound_db": bound, "rows": rows}
    for rate in sorted({r["rate"] for r in rows}):
        rs = [r for r in rows if r["rate"] == rate]
        ref_t = tiles[0]
        for t in tiles[1:]:
            dp = np.mean([r[f"psnr_{t}"] - r[f"psnr_{ref_t}"] for r in rs])
            lv = np.mean([r[f"lpips_vgg_{t}"] for r in rs]) / np.mean(
                [r[f"lpips_vgg_{ref_t}"] for r in rs])
            extra = np.mean([(r[f"index_bytes_{t}"] - r[f"index_bytes_{ref_t}"])
                             / r["stream_bytes"] for r in rs])
            line = (f"rate {rate:g}: tile {t} vs {ref_t}: PSNR {dp:+.3f} dB, LPIPS-VGG "
                    f"x{lv:.4f}, extra bytes {100 * extra:+.1f} % of the stream")
            summary[f"{rate:g}_tile{t}"] = {"d_psnr": float(dp), "lpips_vgg_ratio": float(lv),
                                            "extra_bytes_share": float(extra)}
            print(line, flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
