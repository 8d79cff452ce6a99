"""A tiny random refine model, shared by the refine tests, the codec contract and the fuzz
bench: its refinement visibly changes the image, so the encoder's blend weights are not all
zero (an untrained, zero-initialised head would refine nothing)."""

from __future__ import annotations

import torch

from cdc.refine.config import REFINE_CONFIGS, RefineConfig
from cdc.refine.model import RefineNet
from cdc.weights import pack_weights


def refine_bytes(seed: int = 0, meta: dict | None = None, cfg: RefineConfig | None = None
                 ) -> bytes:
    """Weights-file bytes of a random ``refine-test`` (or ``cfg``) network."""
    cfg = cfg or REFINE_CONFIGS["refine-test"]
    torch.manual_seed(seed)
    net = RefineNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
        net.head[-1].weight.normal_(0, 0.5)  # residuals of a few grey levels, not 0.1
    return pack_weights("refine", cfg.name, cfg.to_dict(), net.state_dict(), meta or {})


def latent_refine_bytes(seed: int = 0, meta: dict | None = None) -> bytes:
    """Weights-file bytes of a random ``refine-latent-test`` network on the shipped TAEF2."""
    from cdc.refine.latent_model import LatentRefineNet
    from zoo import load_space

    cfg = REFINE_CONFIGS["refine-latent-test"]
    torch.manual_seed(seed)
    net = LatentRefineNet(cfg)
    with torch.no_grad():
        net.out.weight.normal_(0, 0.2)
    return pack_weights("refine", cfg.name, cfg.to_dict(), net.state_dict(), meta or {},
                        space=load_space("taef2"))
