"""The refine denoiser a config describes: pixel-space U-Net or TAEF2-latent trunk."""

from __future__ import annotations

from cdc.refine.config import RefineConfig
from cdc.refine.latent_model import LatentRefineNet
from cdc.refine.model import RefineNet

RefineDenoiser = RefineNet | LatentRefineNet


def build_net(cfg: RefineConfig) -> RefineDenoiser:
    return LatentRefineNet(cfg) if cfg.space == "taef2" else RefineNet(cfg)
