"""Neural networks of the CDC codec: transforms, entropy model, denoiser."""

from cdc.models.compressor import ConditionalDiffusionCompressor

__all__ = ["ConditionalDiffusionCompressor"]
