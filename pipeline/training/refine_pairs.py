"""Training pairs for the refine codec: (original crop, base-layer decode of the same crop).

Each training photo is base-encoded whole (as the codec encodes an image) at a few random
(quality, downscale) settings, decoded, upsampled, and cut into random crops; the pairs
are cached once as uint8 shards (``shard-NNNN.npz``), so a run resumes, and a new machine
rebuilds the cache the same way (seeded by the photo's name). Photos listed in the
validation split are never used.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cdc.refine import base_layer
from cdc.refine.config import RefineConfig
from pipeline.sources import list_images
from pipeline.training.image_crops import read_image

log = logging.getLogger(__name__)
SHARD_IMAGES = 100
#: (scale, probability, lowest quality, highest quality): rates from ~0.02 to ~1 bpp.
SETTINGS = ((1, 0.6, 0, 64), (2, 0.3, 0, 80), (4, 0.1, 10, 90))


def read_split(path: str | Path) -> set[str]:
    """Names (``folder/file``) in a split file (``#`` comments and blank lines ignored)."""
    lines = Path(path).read_text().splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}


def split_name(url: str) -> str:
    """A photo's name in the split files: its parent folder and file name."""
    parts = url.replace("\\", "/").rstrip("/").split("/")
    return "/".join(parts[-2:])


def _settings(rng: random.Random) -> tuple[int, int]:
    r, acc = rng.random(), 0.0
    for scale, p, qlo, qhi in SETTINGS:
        acc += p
        if r < acc:
            return scale, rng.randint(qlo, qhi)
    scale, _, qlo, qhi = SETTINGS[-1]
    return scale, rng.randint(qlo, qhi)


def pairs_of(array: np.ndarray, name: str, cfg: RefineConfig, crop: int, variants: int,
             crops: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(originals, bases, bpp): ``variants`` × ``crops`` uint8 crop pairs of one photo."""
    rng = random.Random(int(hashlib.sha1(name.encode()).hexdigest(), 16))
    h, w = array.shape[:2]
    if min(h, w) < crop:
        raise ValueError(f"{name}: {w}×{h} is smaller than the {crop}-px crop")
    xs, bs, bpps = [], [], []
    for _ in range(variants):
        scale, q = _settings(rng)
        choice = base_layer.encode(array, q, scale, cfg)
        base = base_layer.decode_choice(choice, h, w)
        base = base[0].add(1).mul(127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        for _ in range(crops):
            top, left = rng.randint(0, h - crop), rng.randint(0, w - crop)
            xs.append(array[top:top + crop, left:left + crop])
            bs.append(base[top:top + crop, left:left + crop])
            bpps.append(8 * len(choice.data) / (h * w))
    return np.stack(xs), np.stack(bs), np.array(bpps, dtype=np.float32)


def build_cache(sources: list[str] | str, folder: str | Path, cfg: RefineConfig, *,
                exclude: set[str] = frozenset(), crop: int = 128, variants: int = 2,
                crops: int = 3) -> Path:
    """Fill ``folder`` with pair shards (resumable: finished shards are kept)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    urls = [u for u in list_images(sources) if split_name(u) not in exclude]
    for s in range(0, len(urls), SHARD_IMAGES):
        path = folder / f"shard-{s // SHARD_IMAGES:04d}.npz"
        if path.exists():
            continue
        xs, bs, bpps = [], [], []
        for url in urls[s:s + SHARD_IMAGES]:
            try:
                arr = np.asarray(read_image(url).convert("RGB"))
                x, b, r = pairs_of(arr, split_name(url), cfg, crop, variants, crops)
            except Exception as e:  # noqa: BLE001 - one bad photo must not stop the cache
                log.warning("skipping training photo %s: %s", url, e)
                continue
            xs.append(x)
            bs.append(b)
            bpps.append(r)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, x=np.concatenate(xs), base=np.concatenate(bs), bpp=np.concatenate(bpps))
        tmp.replace(path)
        log.info("pair cache: %s (%d pairs)", path, sum(len(x) for x in xs))
    (folder / "DONE").write_text(f"{len(urls)} photos\n")
    return folder


class PairCrops(Dataset):
    """Random (horizontally flipped) sub-crops of the cached pairs: (x, base) in [-1, 1]."""

    def __init__(self, folder: str | Path, crop: int, seed: int = 0,
                 samples_per_epoch: int = 10**9):
        shards = sorted(Path(folder).glob("shard-*.npz"))
        shards = [s for s in shards if ".tmp" not in s.name]
        if not shards:
            raise FileNotFoundError(f"{folder}: no pair shards (build the cache first)")
        data = [np.load(s) for s in shards]
        self.x = np.concatenate([d["x"] for d in data])
        self.base = np.concatenate([d["base"] for d in data])
        self.folder, self.n_shards = Path(folder), len(shards)
        self.crop, self.seed, self.samples = crop, seed, samples_per_epoch

    def refresh(self) -> None:
        """Take in shards a cache builder running beside the run has finished since."""
        shards = [s for s in sorted(self.folder.glob("shard-*.npz")) if ".tmp" not in s.name]
        if len(shards) > self.n_shards:
            data = [np.load(s) for s in shards[self.n_shards:]]
            self.x = np.concatenate([self.x, *[d["x"] for d in data]])
            self.base = np.concatenate([self.base, *[d["base"] for d in data]])
            self.n_shards = len(shards)
            log.info("pair cache: %d shards, %d pairs", self.n_shards, len(self.x))

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random.Random(hash((self.seed, i)))
        j = rng.randrange(len(self.x))
        side = self.x.shape[1]
        top, left = rng.randint(0, side - self.crop), rng.randint(0, side - self.crop)
        x = self.x[j, top:top + self.crop, left:left + self.crop]
        b = self.base[j, top:top + self.crop, left:left + self.crop]
        if rng.random() < 0.5:
            x, b = x[:, ::-1], b[:, ::-1]

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 127.5 - 1

        return t(x), t(b)

