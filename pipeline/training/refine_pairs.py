"""Training pairs for the refine codec: (original crop, base-layer decode of the same crop).

Each training photo is base-encoded whole (as the codec encodes an image) at a few random
(quality, downscale) settings — or, with ``rates``, by the codec's own rate search at random
target rates, so the bases are the ones the encoder makes (fine-ladder downscales included) —
decoded, upsampled, and cut into random crops; the pairs are cached once as uint8 shards
(``shard-NNNN.npz``), so a run resumes, and a new machine rebuilds the cache the same way
(seeded by the photo's name). Photos listed in the validation split are never used.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cdc.avif_threads import set_avif_threads
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


def _base(array: np.ndarray, cfg: RefineConfig, rng: random.Random,
          rates: tuple[float, float] | None) -> base_layer.BaseChoice:
    """One base of a photo: random settings, or the rate search at a log-uniform target rate
    in ``rates`` (bpp) — what ``cdc compress --rate`` would store."""
    if rates is None:
        scale, q = _settings(rng)
        return base_layer.encode(array, q, scale, cfg)
    lo, hi = rates
    bpp = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    h, w = array.shape[:2]
    return base_layer.search(array, max(1, int(bpp * h * w / 8)), cfg)


def pairs_of(array: np.ndarray, name: str, cfg: RefineConfig, crop: int, variants: int,
             crops: int, rates: tuple[float, float] | None = None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(originals, bases, bpp): ``variants`` × ``crops`` uint8 crop pairs of one photo."""
    rng = random.Random(int(hashlib.sha1(name.encode()).hexdigest(), 16))
    h, w = array.shape[:2]
    if min(h, w) < crop:
        raise ValueError(f"{name}: {w}×{h} is smaller than the {crop}-px crop")
    xs, bs, bpps = [], [], []
    for _ in range(variants):
        choice = _base(array, cfg, rng, rates)
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
                crops: int = 3, rates: tuple[float, float] | None = None,
                after_shard: Callable[[Path], object] | None = None,
                workers: int = 1) -> Path:
    """Fill ``folder`` with pair shards (resumable: finished shards are kept); ``rates``:
    bases by the rate search at target rates in that range (see :func:`pairs_of`);
    ``after_shard`` runs here on each new shard (a latent model's builder encodes its
    latents, so a run beside it takes them in as they come); ``workers`` > 1 builds shards
    in that many processes (each AVIF encode on 2 threads; a lent GPU machine's 16 cores),
    with the same shards as one process builds."""
    if rates is not None and not 0 < rates[0] <= rates[1]:
        raise ValueError(f"pair rates {rates}: need 0 < low <= high (bpp)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    urls = [u for u in list_images(sources) if split_name(u) not in exclude]
    jobs = [(folder / f"shard-{s // SHARD_IMAGES:04d}.npz", urls[s:s + SHARD_IMAGES])
            for s in range(0, len(urls), SHARD_IMAGES)]
    jobs = [(path, part, cfg, crop, variants, crops, rates) for path, part in jobs
            if not path.exists()]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawned, not forked: the parent may hold a CUDA context or OpenMP threads
        with ProcessPoolExecutor(min(workers, len(jobs)), initializer=set_avif_threads,
                                 initargs=(2,),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            for path in pool.map(_build_shard, jobs):
                if after_shard is not None:
                    after_shard(path)
    else:
        for job in jobs:
            path = _build_shard(job)
            if after_shard is not None:
                after_shard(path)
    (folder / "DONE").write_text(f"{len(urls)} photos\n")
    return folder


def _build_shard(job: tuple) -> Path:
    """One shard: the pairs of its photos, written atomically (a bad photo is skipped)."""
    path, urls, cfg, crop, variants, crops, rates = job
    xs, bs, bpps = [], [], []
    for url in urls:
        try:
            arr = np.asarray(read_image(url).convert("RGB"))
            x, b, r = pairs_of(arr, split_name(url), cfg, crop, variants, crops, rates)
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
    return path


class PairCrops(Dataset):
    """Random (horizontally flipped) sub-crops of the cached pairs: (x, base) in [-1, 1]."""

    def __init__(self, folder: str | Path | list[str | Path], crop: int, seed: int = 0,
                 samples_per_epoch: int = 10**9):
        """``folder``: one pair cache, or several read as one (in their order; each once)."""
        folders = folder if isinstance(folder, list) else [folder]
        self.folders = list(dict.fromkeys(Path(f) for f in folders))  # each read once
        self.n_shards = {f: 0 for f in self.folders}
        self.x = np.zeros((0, 0, 0, 3), np.uint8)
        self.base = self.x
        self.refresh()
        if not len(self.x):
            raise FileNotFoundError(f"{', '.join(map(str, self.folders))}: no pair shards "
                                    "(build the cache first)")
        self.crop, self.seed, self.samples = crop, seed, samples_per_epoch

    def refresh(self) -> None:
        """Take in shards a cache builder running beside the run has finished since."""
        for folder in self.folders:
            shards = [s for s in sorted(folder.glob("shard-*.npz")) if ".tmp" not in s.name]
            if len(shards) > self.n_shards[folder]:
                data = [np.load(s) for s in shards[self.n_shards[folder]:]]
                old = [self.x] if len(self.x) else []
                self.x = np.concatenate([*old, *[d["x"] for d in data]])
                old = [self.base] if len(self.base) else []
                self.base = np.concatenate([*old, *[d["base"] for d in data]])
                self.n_shards[folder] = len(shards)
                log.info("pair cache: %s: %d shards; %d pairs in all", folder, len(shards),
                         len(self.x))

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

