"""A small patch discriminator for the refiner's optional adversarial term (hinge loss).

Why: MSE and LPIPS-VGG pull a refiner toward the conditional mean, which is smooth; a
discriminator that judges crops of what the user sees (the decoded output) against original
crops rewards natural texture instead (HiFiC, Mentzer et al. 2020). The codec's per-tile
PSNR bound limits what such texture may cost. Spectral norm keeps it stable at the small
batches a CPU affords. It is a training-only part: never shipped, never in a stream.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """Logits for overlapping patches of a [-1, 1] RGB batch (receptive field ≈ 46 px with
    three stride-2 stages): local texture, not the layout, is what it can judge."""

    def __init__(self, channels: int = 32, stages: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c = 3, channels
        for _ in range(stages):
            layers += [spectral_norm(nn.Conv2d(c_in, c, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c_in, c = c, c * 2
        layers += [spectral_norm(nn.Conv2d(c_in, c_in, 3, 1, 1)), nn.LeakyReLU(0.2),
                   spectral_norm(nn.Conv2d(c_in, 1, 3, 1, 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def discriminator_hinge(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's hinge loss: real patches above +1, generated ones below −1."""
    return torch.relu(1 - real_logits).mean() + torch.relu(1 + fake_logits).mean()


def generator_hinge(fake_logits: Tensor) -> Tensor:
    """The generator's side of the hinge game: raise the logits of its own patches."""
    return -fake_logits.mean()
