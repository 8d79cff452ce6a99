"""DiffC (Theis et al., "Lossy Compression with Gaussian Diffusion"): progressive streams.

An unconditional diffusion prior (:mod:`cdc.diffc.model`), reverse-channel coding of
each reverse step (:mod:`cdc.diffc.rcc`), a prefix-decodable stream layout
(:mod:`cdc.diffc.stream`) and the codec (:mod:`cdc.diffc.codec`).
"""

from cdc.diffc.model import DIFFC_CONFIGS, DiffCConfig, DiffusionPrior

__all__ = ["DIFFC_CONFIGS", "DiffCConfig", "DiffusionPrior"]
