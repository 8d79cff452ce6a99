"""The classical base layer: AVIF through Pillow's libavif, downscaled where the rate asks.

Encoder settings are fixed by the model config (speed, chroma subsampling, libaom's tune):
with the default tune the same quality gives the same bytes as the AVIF baseline of
``cdc eval``; ``tune=psnr`` spends the same bytes on fidelity instead. The decoder checks the
AVIF's own size claim against the container header *before* decoding, and upsamples a
downscaled base to the image size (bicubic; both ends run the same op).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from cdc.refine import bare_avif
from cdc.refine.base_decode import decode_rgb, scaled_size
from cdc.refine.config import RefineConfig


@dataclass(frozen=True)
class BaseChoice:
    """One base-layer encoding: the bytes and the settings that made them."""

    data: bytes
    quality: int
    scale: int
    bare: bool = False  # ``data`` is av1C[1:4] + the AV1 payload (cdc.refine.bare_avif)


def encode(array: np.ndarray, quality: int, scale: int, cfg: RefineConfig) -> BaseChoice:
    """(H, W, 3) uint8 → AVIF bytes of the image downscaled by ``scale`` (Lanczos)."""
    img = Image.fromarray(array)
    if scale > 1:
        h, w = scaled_size(array.shape[0], array.shape[1], scale)
        img = img.resize((w, h), Image.LANCZOS)
    buf = io.BytesIO()
    extra = {"advanced": {"tune": cfg.base_tune}} if cfg.base_tune else {}
    img.save(buf, format="AVIF", quality=int(quality), speed=cfg.base_speed,
             subsampling=cfg.base_subsampling, **extra)
    data = buf.getvalue()
    if cfg.base_bare:
        bare = bare_avif.strip(data, img.width, img.height)
        if bare is not None:
            return BaseChoice(bare, int(quality), int(scale), True)
    return BaseChoice(data, int(quality), int(scale))


def decode(data: bytes, height: int, width: int, scale: int, bare: bool = False) -> Tensor:
    """AVIF bytes (``bare``: av1C[1:4] + AV1 payload) → (1, 3, height, width) float in
    [-1, 1] (upsampled when ``scale`` > 1).

    The AVIF must claim exactly the size the header implies (checked before decoding)."""
    arr = decode_rgb(data, height, width, scale, bare)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
    return upsample(x, height, width)


def decode_choice(choice: BaseChoice, height: int, width: int) -> Tensor:
    """The encoder's own decode of a base it just made (whole or bare), at the image size."""
    return decode(choice.data, height, width, choice.scale, choice.bare)


def upsample(x: Tensor, height: int, width: int) -> Tensor:
    """A decoded (downscaled) base at the image size, in [-1, 1]."""
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bicubic",
                         align_corners=False).clamp(-1, 1)


#: Below this quality at one scale, the next downscale is tried too and the one closer to
#: the original (MSE after upsampling) wins: near a scale's lowest rate a half-size image
#: at a high quality can beat the full size at quality 0-20 (sharper, fewer blocks).
TRY_NEXT_SCALE_BELOW = 30
#: Typical growth of log(AVIF size) per quality step (speed 6, 4:2:0), for the first probe
#: of the rate search; any value gives the same answer, a good one fewer encodes (chosen
#: among 0.03–0.05 on 30 validation-split photos at 5 rates and 3 scales).
_LOG_SIZE_PER_QUALITY = 0.04


def _best_fitting(array: np.ndarray, target_bytes: int, scale: int,
                  cfg: RefineConfig) -> tuple[BaseChoice | None, BaseChoice]:
    """(the highest quality at ``scale`` within ``target_bytes`` or None, quality 0).

    A bracket search for the largest quality whose size fits (size grows with quality): after
    quality 0, probes extrapolate at a typical growth (twice as far each time) until one is
    too large; then each probe interpolates log(size) across the bracket (AVIF's size grows
    about exponentially with quality), the quality next to it on the far side of the target
    is tried next, which usually closes the bracket, and where it does not and more than 8
    qualities remain, a bisection follows. The answer is
    bisection's wherever size is monotonic in quality (449 of 450 searches on 30 validation
    photos at 5 rates and 3 scales; the other, a ×4-downscaled 94×125 base whose size is not
    monotonic, found another quality that fits), for 0.64 of its encodes there (each a full
    AVIF encode: most of the search's cost)."""
    low = encode(array, 0, scale, cfg)
    if len(low.data) > target_bytes:
        return None, low
    best, hi, hi_size = low, 101, 0  # hi: the lowest quality known not to fit
    last, last_q, reach = "", -1, 1.0  # how the last probe was chosen; its quality
    while hi - best.quality > 1:
        lo = best.quality
        if last == "interpolated":  # its neighbour on the far side of the target
            q, step = (lo + 1 if lo == last_q else hi - 1), "neighbour"
        elif last == "neighbour" and hi - lo > 8:  # it did not close: halve the bracket
            q, step = (lo + hi) // 2, "bisected"
        elif not hi_size:  # extrapolate at a typical growth, reaching further each time
            grow = math.log(target_bytes / max(1, len(best.data))) / _LOG_SIZE_PER_QUALITY
            q, step = min(100, max(lo + 1, lo + round(reach * grow))), "extrapolated"
            reach *= 2
        else:
            a, b = math.log(max(1, len(best.data))), math.log(hi_size)
            frac = (math.log(target_bytes) - a) / max(b - a, 1e-9)
            q, step = min(hi - 1, max(lo + 1, lo + round(frac * (hi - lo)))), "interpolated"
        c = encode(array, q, scale, cfg)
        if len(c.data) <= target_bytes:
            best = c
        else:
            hi, hi_size = q, len(c.data)
        last, last_q = step, q
    return best, low


def _squared_error(choice: BaseChoice, array: np.ndarray) -> float:
    """Sum of squared errors of a choice's decode (upsampled as the decoder does) in [-1, 1]."""
    h, w = array.shape[:2]
    x = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)[None].float()
    y = decode_choice(choice, h, w)
    return float(((y - x.div(127.5).sub(1.0)) ** 2).sum())


def search(array: np.ndarray, target_bytes: int, cfg: RefineConfig) -> BaseChoice:
    """The best base within ``target_bytes``: at the smallest downscale that fits, the
    highest quality that fits; when that quality is under :data:`TRY_NEXT_SCALE_BELOW`, the
    next downscale's best too, keeping whichever decodes closer to the original (the
    encoder sees it; MSE, a fidelity measure, not an evaluation metric). If nothing fits,
    the smallest encoding found (over budget)."""
    smallest: BaseChoice | None = None
    found: list[BaseChoice] = []
    for scale in sorted(cfg.scales):
        best, low = _best_fitting(array, target_bytes, scale, cfg)
        if smallest is None or len(low.data) < len(smallest.data):
            smallest = low
        if best is not None:
            found.append(best)
            if best.quality >= TRY_NEXT_SCALE_BELOW or len(found) == 2:
                break
    if not found:
        assert smallest is not None
        return smallest
    if len(found) == 1:
        return found[0]
    return min(found, key=lambda c: _squared_error(c, array))
