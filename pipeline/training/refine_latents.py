"""The latent refine model's training pairs: TAEF2 latents of (original, base decode) crops.

Encoding a crop through TAEF2 costs far more than a training step of the latent refiner,
so each pair shard of :mod:`pipeline.training.refine_pairs` (``shard-NNNN.npz``) is encoded once
into ``latent-NNNN.pt`` beside it: ``z`` (original) and ``zb`` (base), fp16,
(N, 32, crop/8, crop/8). Resumable shard by shard; a run takes in new shards as they
appear (:meth:`LatentPairs.refresh`), like the pixel pairs.

    OMP_NUM_THREADS=1 python -m pipeline.training.refine_latents runs/refine-pairs
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)
BATCH = 50


def _pair_shards(folder: Path) -> list[Path]:
    return [s for s in sorted(folder.glob("shard-*.npz")) if ".tmp" not in s.name]


def latent_path(shard: Path) -> Path:
    return shard.with_name(shard.name.replace("shard-", "latent-").replace(".npz", ".pt"))


def _encode(space: torch.nn.Module, a: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(a).permute(0, 3, 1, 2)
    with torch.no_grad():
        return torch.cat([space.encode(x[i:i + BATCH].to(device).float() / 127.5 - 1)
                          .half().cpu() for i in range(0, len(x), BATCH)])


def build_latents(folder: str | Path, space: torch.nn.Module | None = None,
                  device: str = "cpu") -> int:
    """Encode every pair shard that has no latent file yet (TAEF2 on ``device``: a lent
    GPU's builder passes "cuda"); returns how many it encoded."""
    folder = Path(folder)
    todo = [s for s in _pair_shards(folder) if not latent_path(s).exists()]
    if todo and space is None:
        from zoo.components import load_space

        space = load_space("taef2").to(device)
    dev = torch.device(device)
    t0 = time.time()
    for shard in todo:
        d = np.load(shard)
        out = {"z": _encode(space, d["x"], dev), "zb": _encode(space, d["base"], dev),
               "bpp": torch.from_numpy(d["bpp"].astype(np.float32))}
        tmp = latent_path(shard).with_suffix(".tmp")
        torch.save(out, tmp)
        tmp.rename(latent_path(shard))
        log.info("latent cache: %s (%d pairs, %.0f s)", latent_path(shard).name,
                 len(out["z"]), time.time() - t0)
    return len(todo)


class LatentPairs(Dataset):
    """(target z, condition zb) latent pairs, float32, as cached: **no flips**; with
    ``pixels``, also the original crop in [-1, 1] (3, crop, crop) for a loss on the TAEF2
    decode of the prediction.

    TAEF2 is not flip-equivariant: on 24 training crops the latent of a flipped crop differs
    from the flipped latent by 0.54 mean |Δ| (mean |z| 0.67), and the flipped latent decodes
    at 18–19 dB against the flipped crop (its own latent: 27.6 dB). Flipping cached latents
    (what this class did until 2026-12-06, three pairs in four: the shipped refine-avif was
    trained so) feeds the refiner targets no photo has.

    Like :class:`pipeline.training.refine_pairs.PairCrops`, an "epoch" is ``samples_per_epoch``
    random draws (item i is a function of (seed, i): a resumed run draws anew)."""

    def __init__(self, folder: str | Path | list[str | Path], seed: int = 0,
                 samples_per_epoch: int = 10**9, pixels: bool = False):
        """``folder``: one pair cache, or several read as one (in their order; each once)."""
        folders = folder if isinstance(folder, list) else [folder]
        self.folders = list(dict.fromkeys(Path(f) for f in folders))  # each read once
        self.z: list[torch.Tensor] = []
        self.zb: list[torch.Tensor] = []
        self.x: list[torch.Tensor] = []  # uint8 (crop, crop, 3) originals, with ``pixels``
        self.pixels = pixels
        self.n_files = {f: 0 for f in self.folders}
        self.seed, self.samples = seed, samples_per_epoch
        self.refresh()
        if not self.z:
            raise FileNotFoundError(f"{folder}: no latent pair files (python -m "
                                    "pipeline.training.refine_latents FOLDER builds them)")

    def refresh(self) -> None:
        """Take in the latent files written since (a builder may be filling a cache)."""
        for folder in self.folders:
            self._refresh(folder)

    def _refresh(self, folder: Path) -> None:
        files = sorted(folder.glob("latent-*.pt"))
        for f in files[self.n_files[folder]:]:
            d = torch.load(f, map_location="cpu", weights_only=True)
            if self.pixels:  # the pair shard this latent file encodes, in the same order
                x = np.load(f.with_name(f.name.replace("latent-", "shard-")
                                        .replace(".pt", ".npz")))["x"]
                if len(x) != len(d["z"]):
                    raise ValueError(f"{f}: {len(d['z'])} latents for {len(x)} pixel crops")
                self.x.extend(torch.from_numpy(x))
            self.z.extend(d["z"])
            self.zb.extend(d["zb"])
        if len(files) > self.n_files[folder]:
            log.info("latent pairs: %s: %d files; %d pairs in all", folder, len(files),
                     len(self.z))
        self.n_files[folder] = len(files)

    @property
    def pairs(self) -> int:
        return len(self.z)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        rng = random.Random(hash((self.seed, i)))
        j = rng.randrange(len(self.z))
        out = [self.z[j].float(), self.zb[j].float()]
        if self.pixels:
            out.append(self.x[j].permute(2, 0, 1).float() / 127.5 - 1)
        return tuple(out)


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    print(f"encoded {build_latents(sys.argv[1])} shards")
