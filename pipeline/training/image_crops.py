"""Training data: random crops with random flips from image files.

Unreadable files are skipped with one warning each (a bad JPEG among thousands
must not stop a training run).
"""

from __future__ import annotations

import io
import logging
import random

import fsspec
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cdc.colour import to_srgb
from pipeline.sources import list_images

log = logging.getLogger(__name__)


def read_image(url: str) -> Image.Image:
    """Read and fully decode an image file (raises on unreadable data), in sRGB: an embedded
    colour profile is applied as the codec's reader applies it (:mod:`cdc.colour`), so
    training sees the colours the codec will be given (6 % of ``data/train`` carry Adobe RGB
    or camera profiles; caches made before 2026-12-07 kept their raw samples)."""
    from pipeline.image_inputs import is_jxl, open_jxl, register_heif

    with fsspec.open(url, "rb") as f:
        data = f.read()
    register_heif()  # HEIC/HEIF and JPEG XL photos train like any other
    img = open_jxl(data, url) if is_jxl(data) else Image.open(io.BytesIO(data))
    img.load()
    return to_srgb(img)[0]


class RandomCrops(Dataset):
    """Crops of ``crop``×``crop`` from the listed images, as float tensors in [-1, 1].

    Images are decoded once and kept in memory as uint8 (cheap for the ~1.5k
    training photos; pass ``max_side`` to downscale large ones first). Smaller
    images are upscaled so every sample yields a full crop.
    """

    def __init__(self, sources: str | list[str], crop: int, samples_per_epoch: int = 10_000,
                 max_side: int | None = None, seed: int = 0):
        self.crop = crop
        self.samples = samples_per_epoch
        self.images: list[np.ndarray] = []
        self.skipped: list[tuple[str, str]] = []
        for url in list_images(sources):
            try:
                img = read_image(url).convert("RGB")
            except Exception as e:  # noqa: BLE001 - report and move on
                log.warning("skipping unreadable training image %s: %s", url, e)
                self.skipped.append((url, str(e)))
                continue
            if max_side and max(img.size) > max_side:
                s = max_side / max(img.size)
                img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))),
                                 Image.BICUBIC)
            if min(img.size) < crop:
                s = crop / min(img.size)
                img = img.resize((max(crop, round(img.width * s)),
                                  max(crop, round(img.height * s))), Image.BICUBIC)
            self.images.append(np.asarray(img))
        if not self.images:
            raise FileNotFoundError(f"no readable training images in {sources}")
        self.seed = seed

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = random.Random(hash((self.seed, i, torch.initial_seed())))
        img = self.images[rng.randrange(len(self.images))]
        h, w = img.shape[:2]
        top, left = rng.randint(0, h - self.crop), rng.randint(0, w - self.crop)
        patch = img[top : top + self.crop, left : left + self.crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        x = torch.from_numpy(np.array(patch)).permute(2, 0, 1).float()  # a writable copy
        return x.div(127.5).sub(1.0)
