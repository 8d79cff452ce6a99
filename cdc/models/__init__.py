"""Neural networks of the CDC codec: transforms, entropy model, denoiser.

``ConditionalDiffusionCompressor`` (and with it CompressAI) is imported on first use, so a
codec that needs only the U-Net (DiffC's prior: :mod:`cdc.models.unet`) does not pay for
CompressAI's package import (its point-cloud datasets pull in torch_geometric).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "ConditionalDiffusionCompressor":
        raise AttributeError(f"module 'cdc.models' has no attribute {name!r}")
    from cdc.models.compressor import ConditionalDiffusionCompressor

    globals()[name] = ConditionalDiffusionCompressor
    return ConditionalDiffusionCompressor


__all__ = ["ConditionalDiffusionCompressor"]
