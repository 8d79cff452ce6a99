"""The latent-grid filter: takes out what repeats every 8 pixels, keeps ramps and texture."""

from __future__ import annotations

import pytest
import torch

from cdc.refine.config import REFINE_CONFIGS, RefineConfig
from cdc.refine.degrid import periodic_part, remove_grid


def _grid(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cell = torch.randn(1, 3, 8, 8, generator=g) * 0.1
    return cell.repeat(1, 1, -(-h // 8), -(-w // 8))[..., :h, :w]


@pytest.mark.parametrize("h,w", [(64, 96), (53, 37)])
def test_a_periodic_grid_on_a_smooth_image_is_removed(h: int, w: int) -> None:
    yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.4, 0.6, w),
                            indexing="ij")
    base = torch.stack([yy, xx, yy * xx]).unsqueeze(0)
    grid = _grid(h, w)
    grid = grid - grid.mean(dim=(2, 3), keepdim=True)
    out = remove_grid(base + grid, base)
    assert out.shape == base.shape
    left = float(((out - base) ** 2).mean() / (grid ** 2).mean())
    assert left < 0.02, left  # ≥ 98 % of the grid's energy gone


def test_ramps_do_not_become_sawtooth() -> None:
    yy, xx = torch.meshgrid(torch.arange(80.0), torch.arange(120.0), indexing="ij")
    ramp = (0.01 * xx - 0.004 * yy).expand(1, 3, 80, 120).contiguous()
    assert float(periodic_part(ramp).abs().max()) < 1e-5


def test_texture_that_does_not_repeat_is_kept() -> None:
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 3, 128, 128, generator=g) * 0.1
    base = torch.zeros_like(noise)
    out = remove_grid(noise, base)
    kept = float((out ** 2).mean() / (noise ** 2).mean())
    assert kept > 0.95, kept
    # and the filter does not touch the base: only the refinement is filtered
    assert torch.allclose(remove_grid(base + 0.3, base + 0.3), base + 0.3)


def test_degrid_is_a_latent_space_option_and_old_weights_decode_without_it() -> None:
    with pytest.raises(ValueError, match="degrid_window"):
        RefineConfig(degrid_window=8)  # pixel space
    with pytest.raises(ValueError, match="degrid_window"):
        RefineConfig(space="taef2", degrid_window=-1)
    old = REFINE_CONFIGS["refine-latent"].to_dict()
    del old["degrid_window"]  # a weights file written before the option
    assert RefineConfig.from_dict(old).degrid_window == 0
    assert REFINE_CONFIGS["refine-latent"].degrid_window == 8
