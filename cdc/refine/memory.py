"""A refine decode's peak-memory estimate, without torch: one function, so the torch codec
and the ONNX decoder check a :class:`cdc.limits.DecodeBudget` against the same figure."""

from __future__ import annotations

from cdc import taef2_memory
from cdc.refine.config import RefineConfig


def alloc_bytes(cfg: RefineConfig, h: int, w: int, space_tile: int | None = None) -> int:
    """Estimated peak bytes of decoding an h×w image: whole-image tensors plus one network
    tile; in TAEF2 latent space (``space_tile`` given) the latents plus the larger of TAEF2's
    encode (of the base) and its decode."""
    whole = 4 * (12 if cfg.degrid_window else 10) * 3 * h * w  # degrid: 2 more
    if space_tile is not None:
        lh, lw = -(-h // taef2_memory.STRIDE), -(-w // taef2_memory.STRIDE)
        latent = 4 * 8 * (cfg.channels[0] + 32) * lh * lw
        return whole + latent + max(taef2_memory.encode_bytes(space_tile, h, w),
                                    taef2_memory.decode_bytes(space_tile, h, w))
    side = min(max(h, w), cfg.net_tile + 2 * cfg.net_margin)
    tile = side * min(min(h, w), side)
    level = sum(c * (4 * cfg.blocks + 4) / 4 ** (i + 1) for i, c in enumerate(cfg.channels))
    return int(whole + 4 * tile * (3 * cfg.head_channels + 12 + level))
