"""Pixel- or latent-space refiner? A probe at the same CPU budget (issue: the refine codec).

The pixel refiner (``configs/refine-small.yaml``, RefineNet on pixels, MSE + LPIPS-VGG)
barely moved LPIPS-VGG after thousands of CPU steps. This probe trains the other candidate
the issue names: a small residual network in the frozen TAEF2 latent space, the condition
being the latent of the AVIF base decode and the target the latent of the original, with a
plain **latent MSE** (no perceptual loss: TAEF2's adversarially trained decoder supplies the
texture). Output = TAEF2-decode of the refined latent, blended per 64×64 tile into the base
under a PSNR bound (the codec's own :mod:`cdc.refine.blend`).

Data: the refine pair cache (``runs/refine-pairs``, training photos only, built by
``python -m pipeline.training.train_refine configs/refine-small.yaml``); evaluation: 256-px centre
crops of validation-split photos (``configs/validation-split.txt``), never Kodak, with PSNR
and LPIPS-VGG only (the training-side metric; LPIPS-Alex, DISTS and FID stay evaluation-only).

    OMP_NUM_THREADS=1 python bench/refine_latent_probe.py --shards 3 --steps 1500
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from refine_operating_points import validation_photo
from torch import nn

TAEF2 = Path("../shared/pretrained/taef2")


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.silu(self.c1(F.silu(x))))


class LatentRefiner(nn.Module):
    """ẑ = z_base + f(z_base): 32-channel TAEF2 latents at H/8, no normalisation."""

    def __init__(self, ch: int = 96, blocks: int = 6):
        super().__init__()
        self.inp = nn.Conv2d(32, ch, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(ch) for _ in range(blocks)])
        self.out = nn.Conv2d(ch, 32, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, zb: torch.Tensor) -> torch.Tensor:
        return zb + self.out(F.silu(self.body(self.inp(zb))))


class PixelsToLatent(nn.Module):
    """ẑ = f(base pixels): an 8× pixel-unshuffle stem instead of the TAEF2 encoder (which
    costs as much as the decoder at decode time)."""

    def __init__(self, ch: int = 96, blocks: int = 6):
        super().__init__()
        self.inp = nn.Sequential(nn.Conv2d(192, ch, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(ch, ch, 3, padding=1))
        self.body = nn.Sequential(*[ResBlock(ch) for _ in range(blocks)])
        self.out = nn.Conv2d(ch, 32, 3, padding=1)

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.body(self.inp(F.pixel_unshuffle(base, 8)))))


def base_pixels(pairs: Path, shards: int) -> torch.Tensor:
    """The base crops in the latent cache's order, uint8 (N, 3, 128, 128)."""
    return torch.cat([torch.from_numpy(np.load(pairs / f"shard-{k:04d}.npz")["base"])
                      .permute(0, 3, 1, 2) for k in range(shards)])


def latents(space, cache: Path, pairs: Path, shards: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TAEF2 latents of (original, base) for the first ``shards`` pair shards, cached."""
    if cache.exists():
        c = torch.load(cache)
        return c["z"], c["zb"]
    zs, zbs, t0 = [], [], time.time()
    for k in range(shards):
        d = np.load(pairs / f"shard-{k:04d}.npz")
        x, base = (torch.from_numpy(d[k]).permute(0, 3, 1, 2) for k in ("x", "base"))
        for i in range(0, len(x), 50):
            with torch.no_grad():
                zs.append(space.encode(x[i:i + 50].float() / 127.5 - 1))
                zbs.append(space.encode(base[i:i + 50].float() / 127.5 - 1))
        print(f"latents: shard {k} done at {time.time() - t0:.0f} s", flush=True)
    z, zb = torch.cat(zs), torch.cat(zbs)
    torch.save({"z": z, "zb": zb}, cache)
    return z, zb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="runs/refine-pairs")
    ap.add_argument("--cache", default="runs/refine-latent-probe.pt")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--split", default="configs/validation-split.txt")
    ap.add_argument("--root", default="../shared/data/train")
    ap.add_argument("--qualities", default="5,15,35")
    ap.add_argument("--input", choices=("latent", "pixels"), default="latent",
                    help="the refiner reads the base's TAEF2 latent, or the base pixels")
    a = ap.parse_args()
    from cdc.refine import base_layer, blend
    from cdc.refine.config import REFINE_CONFIGS
    from cdc.spaces.taef2 import TAEF2Space
    from pipeline.metrics.lpips import LPIPS

    torch.manual_seed(0)
    def state(n: str) -> dict:
        return torch.load(TAEF2 / f"taef2_{n}.pth", map_location="cpu", weights_only=True)
    space = TAEF2Space(state("encoder"), state("decoder"))
    z, zb = latents(space, Path(a.cache), Path(a.pairs), a.shards)
    print(f"pairs {len(z)}; latent rms {float(z.pow(2).mean().sqrt()):.3f}, "
          f"base-to-original rms {float((z - zb).pow(2).mean().sqrt()):.3f}", flush=True)
    pixels = a.input == "pixels"
    if pixels:
        zb = base_pixels(Path(a.pairs), a.shards)
        assert len(zb) == len(z), "pair shards changed since the latent cache was made"
    net = PixelsToLatent() if pixels else LatentRefiner()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0 = time.time()
    for it in range(a.steps):
        j = torch.randint(0, len(z), (32,))
        inp, target = zb[j], z[j]
        if pixels:
            inp = inp.float() / 127.5 - 1
        if it % 2:
            inp, target = inp.flip(-1), target.flip(-1)
        loss = (net(inp) - target).pow(2).mean()
        for g in opt.param_groups:  # cosine to 0.1×
            g["lr"] = 1e-3 * (0.1 + 0.45 * (1 + np.cos(np.pi * it / a.steps)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 250 == 0:
            print(f"step {it}: latent mse {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    net.eval()
    lp, cfg = LPIPS("vgg"), REFINE_CONFIGS["refine-small"]
    names = [n.strip() for n in open(a.split) if n.strip() and not n.startswith("#")]
    names = names[:: max(1, len(names) // 10)][:10]
    for q in (int(v) for v in a.qualities.split(",")):
        rows = []
        for name in names:
            im = validation_photo(a.root, name)
            w, h, s = *im.size, 256
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            arr = np.asarray(im).copy()
            choice = base_layer.encode(arr, q, 1, cfg)
            base = base_layer.decode_choice(choice, s, s)
            x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1
            with torch.no_grad():
                y = space.decode(net(base) if pixels else net(space.encode(base)))
                outs = [base, y]
                for bound in (0.3, 1.5):
                    outs.append(blend.bounded(x, base, y, cfg.table, cfg.tile, bound)[1])
                rows.append([float(10 * torch.log10(4 / (u - x).pow(2).mean())) for u in outs]
                            + [float(lp((u + 1) / 2, (x + 1) / 2).mean()) for u in outs]
                            + [8 * len(choice.data) / (s * s)])
        r = np.array(rows).mean(0)
        print(f"AVIF q{q} ({r[8]:.3f} bpp): PSNR base {r[0]:.2f} latent {r[1]:.2f} "
              f"bound0.3 {r[2]:.2f} bound1.5 {r[3]:.2f} | LPIPS-VGG base {r[4]:.4f} "
              f"latent {r[5]:.4f} bound0.3 {r[6]:.4f} bound1.5 {r[7]:.4f}", flush=True)


if __name__ == "__main__":
    main()
