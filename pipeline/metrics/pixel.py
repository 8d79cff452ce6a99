"""PSNR and MS-SSIM on RGB tensors in [0, 1], one value per image.

MS-SSIM follows Wang et al. 2003 and matches ``pytorch_msssim.ms_ssim`` exactly for
images whose short side exceeds 160 px (5 scales, 11-tap Gaussian, sigma 1.5).
``pytorch_msssim`` asserts on smaller images; here smaller images get as many scales
as fit, with the standard weights truncated and renormalised (see
:func:`ms_ssim_levels`), and NaN below 11 px.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN_SIZE = 11
WIN_SIGMA = 1.5


def _check(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image, (N,)."""
    _check(x, y)
    return (x.double() - y.double()).pow(2).flatten(1).mean(1)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB per image, (N,): 10·log10(range² / MSE); +inf for identical images."""
    return 10 * torch.log10(data_range**2 / mse(x, y))


def ms_ssim_levels(height: int, width: int, win_size: int = WIN_SIZE) -> int:
    """Scales MS-SSIM can use at this size (5 when the short side is > 160 px; 0: too small)."""
    side = min(height, width)
    return max((lv for lv in range(1, len(MS_SSIM_WEIGHTS) + 1)
                if side > (win_size - 1) * 2 ** (lv - 1)), default=0)


def _gauss_1d(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: Tensor, win: Tensor) -> Tensor:
    c = x.shape[1]
    x = F.conv2d(x, win.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, win.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _ssim_cs(x: Tensor, y: Tensor, win: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _blur(x, win), _blur(y, win)
    sxx = _blur(x * x, win) - mx**2
    syy = _blur(y * y, win) - my**2
    sxy = _blur(x * y, win) - mx * my
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)  # (N, C)


def ms_ssim(x: Tensor, y: Tensor, data_range: float = 1.0, levels: int | None = None) -> Tensor:
    """MS-SSIM per image, (N,), in [0, 1]; fewer scales on small images, NaN if < 11 px."""
    _check(x, y)
    h, w = x.shape[-2:]
    levels = levels or ms_ssim_levels(h, w)
    if levels == 0:
        return torch.full((x.shape[0],), math.nan, dtype=torch.float64, device=x.device)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=torch.float64, device=x.device)
    weights = weights / weights.sum()
    x, y = x.float(), y.float()  # float32 like pytorch_msssim: float64 convs are ~5x slower on CPU
    win = _gauss_1d(WIN_SIZE, WIN_SIGMA, x.device).float()
    mcs = []
    for i in range(levels):
        ssim_c, cs = _ssim_cs(x, y, win, data_range)
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=pad)
            y = F.avg_pool2d(y, kernel_size=2, padding=pad)
    stack = torch.stack(mcs + [torch.relu(ssim_c)], dim=0).double()  # (levels, N, C)
    return torch.prod(stack ** weights.view(-1, 1, 1), dim=0).mean(1)
