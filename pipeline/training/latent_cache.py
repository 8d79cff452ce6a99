"""Cached latents of the training photos in a frozen space (TAEF2), for latent codecs.

Encoding a photo through TAEF2 costs about a second on two CPU cores, far more than a
training step on its latent, so each training image is encoded once, stored as fp16
``.npy`` under a cache folder named by the space's digest and the preprocessing, and the
trainer samples random crops of those latents (with the aligned pixel crop when a loss
after the frozen decoder needs it). Building is resumable (existing files are kept) and
can run beside a training run that already reads what is there (:meth:`LatentCrops.refresh`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cdc.spaces import Space
from pipeline.sources import list_images
from pipeline.training.image_crops import read_image

log = logging.getLogger(__name__)


def prepare_image(img: Image.Image, max_side: int | None, min_side: int, stride: int) -> np.ndarray:
    """RGB uint8 (H, W, 3): downscaled to ``max_side``, upscaled to ``min_side``,
    cut to ``stride``."""
    img = img.convert("RGB")
    if max_side and max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))),
                         Image.BICUBIC)
    if min(img.size) < min_side:
        s = min_side / min(img.size)
        img = img.resize((max(min_side, round(img.width * s)),
                          max(min_side, round(img.height * s))), Image.BICUBIC)
    arr = np.asarray(img)
    h, w = arr.shape[0] // stride * stride, arr.shape[1] // stride * stride
    return np.ascontiguousarray(arr[:h, :w])


def cache_dir(root: str | Path, space: Space, max_side: int | None, min_side: int) -> Path:
    """One folder per (space weights, preprocessing): a changed space never reuses latents."""
    tag = json.dumps({"space": space.spec(), "components": space.components(),
                      "max_side": max_side, "min_side": min_side}, sort_keys=True)
    return Path(root) / f"{space.name}-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"


def _entry_name(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:20] + ".npy"


@torch.no_grad()
def build_cache(sources: str | list[str], space: Space, root: str | Path,
                max_side: int | None = 512, min_side: int = 128, limit: int | None = None,
                progress: bool = False) -> Path:
    """Encode every training image not yet cached; returns the cache folder."""
    folder = cache_dir(root, space, max_side, min_side)
    folder.mkdir(parents=True, exist_ok=True)
    if _builder_alive(folder):
        raise RuntimeError(f"{folder}: another process is building this latent cache")
    (folder / LOCK).write_text(f"{os.getpid()}\n")
    try:
        return _build(folder, sources, space, max_side, min_side, limit, progress)
    finally:
        (folder / LOCK).unlink(missing_ok=True)


def _build(folder: Path, sources: str | list[str], space: Space, max_side: int | None,
           min_side: int, limit: int | None, progress: bool) -> Path:
    urls = list_images(sources)
    index_path = folder / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    todo = [u for u in urls if u not in index][: limit]
    for i, url in enumerate(todo):
        try:
            arr = prepare_image(read_image(url), max_side, min_side, space.stride)
        except Exception as e:  # noqa: BLE001 - a bad photo must not stop the cache
            log.warning("skipping unreadable training image %s: %s", url, e)
            continue
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1)
        z = space.encode(x)[0].half().numpy()
        name = _entry_name(url)
        tmp = folder / (name + ".tmp.npy")
        np.save(tmp, z)
        os.replace(tmp, folder / name)
        index[url] = {"file": name, "height": arr.shape[0], "width": arr.shape[1]}
        if (i + 1) % 25 == 0 or i + 1 == len(todo):
            _write_index(index_path, index)
            if progress:
                print(f"latent cache: {len(index)}/{len(urls)} images", flush=True)
    _write_index(index_path, index)
    return folder


LOCK = "building.lock"


def _builder_alive(folder: Path) -> bool:
    """Whether another process (its pid in the lock file) is filling this cache now."""
    try:
        pid = int((folder / LOCK).read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return pid != os.getpid()


def ensure_cache(sources: str | list[str], space: Space, root: str | Path,
                 max_side: int | None = 512, min_side: int = 128) -> Path:
    """The cache folder, after encoding whatever is missing — unless a builder is running
    beside us, in which case training starts on what is there and picks up the rest."""
    folder = cache_dir(root, space, max_side, min_side)
    if _builder_alive(folder):
        log.warning("%s: another process is building this latent cache; using what is there",
                    folder)
        return folder
    return build_cache(sources, space, root, max_side, min_side, progress=True)


def _write_index(path: Path, index: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=0, sort_keys=True))
    os.replace(tmp, path)


class LatentCrops(Dataset):
    """Random ``crop``×``crop`` crops of cached latents (B, C, crop, crop), fp32.

    With ``pixels=True`` each item is ``(latent, image)`` where ``image`` is the aligned
    pixel crop in [-1, 1] (re-read from the source photo, kept in memory as uint8).
    Horizontal flips are not applied: a flipped latent is not the latent of a flipped photo.
    """

    def __init__(self, folder: str | Path, crop: int, stride: int, samples: int = 10**9,
                 seed: int = 0, pixels: bool = False, max_side: int | None = 512,
                 min_side: int = 128):
        self.folder, self.crop, self.stride = Path(folder), crop, stride
        self.samples, self.seed, self.pixels = samples, seed, pixels
        self.max_side, self.min_side = max_side, min_side
        self.latents: list[np.ndarray] = []
        self.images: list[np.ndarray] = []
        self.urls: list[str] = []
        self.refresh()

    def refresh(self) -> int:
        """Pick up images the cache gained since (a builder may run beside training)."""
        index_path = self.folder / "index.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
        for url in sorted(set(index) - set(self.urls)):
            z = np.load(self.folder / index[url]["file"])
            if min(z.shape[1:]) < self.crop:
                continue
            if self.pixels:
                self.images.append(prepare_image(read_image(url), self.max_side, self.min_side,
                                                 self.stride))
            self.latents.append(z)
            self.urls.append(url)
        if not self.latents:
            raise FileNotFoundError(
                f"{self.folder}: no cached latents of at least {self.crop}² "
                "(build the cache first: python -m pipeline.training.latent_cache)")
        return len(self.latents)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int):
        rng = random.Random(hash((self.seed, i, torch.initial_seed())))
        k = rng.randrange(len(self.latents))
        z = self.latents[k]
        top, left = rng.randint(0, z.shape[1] - self.crop), rng.randint(0, z.shape[2] - self.crop)
        lat = torch.from_numpy(np.array(z[:, top : top + self.crop, left : left + self.crop],
                                        dtype=np.float32))
        if not self.pixels:
            return lat
        s, c = self.stride, self.crop * self.stride
        patch = self.images[k][top * s : top * s + c, left * s : left * s + c]
        img = torch.from_numpy(np.array(patch)).permute(2, 0, 1).float().div(127.5).sub(1)
        return lat, img


def main() -> None:
    """``python -m pipeline.training.latent_cache [SOURCES..] --root runs/latent-cache``:
    build the cache."""
    import argparse

    from zoo.components import load_space

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("sources", nargs="*", default=["../shared/data/train"])
    p.add_argument("--root", default="runs/latent-cache")
    p.add_argument("--space", default="taef2")
    p.add_argument("--max-side", type=int, default=512)
    p.add_argument("--min-side", type=int, default=128)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    folder = build_cache(a.sources, load_space(a.space), a.root, a.max_side, a.min_side, a.limit,
                         progress=True)
    print(folder)


if __name__ == "__main__":
    main()
