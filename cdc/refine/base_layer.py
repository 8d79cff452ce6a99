"""The classical base layer: AVIF through Pillow's libavif, downscaled where the rate asks.

Encoder settings are fixed by the model config (speed, chroma subsampling, libaom's tune):
with the default tune the same quality gives the same bytes as the AVIF baseline of
``cdc eval``; ``tune=psnr`` spends the same bytes on fidelity instead. The decoder checks the
AVIF's own size claim against the container header *before* decoding, and upsamples a
downscaled base to the image size (bicubic; both ends run the same op).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from cdc.avif_threads import avif_threads
from cdc.refine import bare_avif, downscale
from cdc.refine.base_decode import decode_rgb, scaled_size
from cdc.refine.config import RefineConfig
from cdc.refine.rate_search import largest_fitting


@dataclass(frozen=True)
class BaseChoice:
    """One base-layer encoding: the bytes and the settings that made them."""

    data: bytes
    quality: int
    scale: int  # the downscale's code (cdc.refine.downscale): 1, 2, 4, 8 or 0x80 | twelfths
    bare: bool = False  # ``data`` is av1C[1:4] + the AV1 payload (cdc.refine.bare_avif)


#: Within :func:`memoised`: what was made of which array (kept alive with it, so ``id`` keys
#: stay valid), so many searches over one image encode, resize and measure each thing once.
_MEMO: ContextVar[dict | None] = ContextVar("base_layer_memo", default=None)


@contextmanager
def memoised() -> Iterator[None]:
    """Within this, encodes, resizes and error sums of the same array are made once: a
    fidelity search (:mod:`cdc.refine.fidelity_search`) runs several rate searches over one
    image, which try many of the same qualities."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def _remembered(kind: str, array: np.ndarray, key: tuple, make):
    memo = _MEMO.get()
    if memo is None:
        return make()
    k = (kind, id(array), *key)
    if k not in memo:
        memo[k] = (array, make())
    return memo[k][1]


def encode(array: np.ndarray, quality: int, scale: int, cfg: RefineConfig) -> BaseChoice:
    """(H, W, 3) uint8 → AVIF bytes of the image downscaled by the factor of the code
    ``scale`` (Lanczos)."""
    return _remembered("encode", array, (int(quality), int(scale), cfg.base_speed,
                                         cfg.base_subsampling, cfg.base_tune, cfg.base_bare),
                       lambda: _encode(array, quality, scale, cfg))


def _encode(array: np.ndarray, quality: int, scale: int, cfg: RefineConfig) -> BaseChoice:
    img = Image.fromarray(_resized(array, scale))
    buf = io.BytesIO()
    extra = {"advanced": {"tune": cfg.base_tune}} if cfg.base_tune else {}
    img.save(buf, format="AVIF", quality=int(quality), speed=cfg.base_speed,
             subsampling=cfg.base_subsampling, max_threads=avif_threads(), **extra)
    data = buf.getvalue()
    if cfg.base_bare:
        bare = bare_avif.strip(data, img.width, img.height)
        if bare is not None:
            return BaseChoice(bare, int(quality), int(scale), True)
    return BaseChoice(data, int(quality), int(scale))


def decode(data: bytes, height: int, width: int, scale: int, bare: bool = False) -> Tensor:
    """AVIF bytes (``bare``: av1C[1:4] + AV1 payload) → (1, 3, height, width) float in
    [-1, 1] (upsampled when the downscale code ``scale`` is not 1).

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


#: Below this quality at the first downscale that fits, the smaller ones are tried too and
#: the candidate closest to the original (MSE after upsampling) wins: a smaller image at a
#: higher quality can beat it (sharper, fewer blocks). On 16 validation photos at 0.03-0.25
#: bpp (144 searches, bench/base_downscales.py) the winner sat at quality 9-49; a walk that
#: stops at 45 kept all the gain of walking the whole ladder (0.03-0.12 dB of base PSNR over
#: octaves) and was never worse than octaves, where 30 and 35 were worse on 1-2 photos a rate.
TRY_NEXT_SCALE_BELOW = 45
#: Real searches of every step cost twice the old search's time, so the smaller downscales
#: are ranked by fast encodes (libaom speed 10) first, and only the best-ranked get the real
#: search: at most this many, and only those within SCREEN_MARGIN of the best fast error.
#: On 80 validation searches at 0.03-0.2 bpp, 3 candidates within 5 % kept 0.05-0.09 dB of
#: base PSNR of the 0.06-0.10 dB the full walk gains over the old search; 2 candidates (no
#: margin) 0.05-0.09 with 4 photos worse than the old search at 0.12 bpp, a 2 % margin
#: 0.04-0.08.
SCREENED_CANDIDATES = 3
SCREEN_MARGIN = 0.05
#: The fast encoder that predicts the real one's sizes in the rate search (libaom's fastest).
FAST_SPEED = 10
#: Typical real/fast size ratio at the default speed 6, the predictor's first scale (later
#: ones are measured): the median at the answer over 30 validation-split photos at 5 rates and
#: 3 scales, 0.946 (quartiles 0.91-0.97; bench/refine_rate_search.py, 2026-12-07).
_TYPICAL_RATIO = {6: 0.95}


def _best_fitting(array: np.ndarray, target_bytes: int, scale: int,
                  cfg: RefineConfig) -> tuple[BaseChoice | None, BaseChoice | None]:
    """(the highest quality at ``scale`` within ``target_bytes``, None) or, when even quality
    0 is too large, (None, quality 0's encoding). The search
    (:func:`cdc.refine.rate_search.largest_fitting`) predicts with fast encodes and confirms
    with real ones: the answer is bisection's wherever size grows with quality."""
    array = _resized(array, scale)  # resize once, not per encode
    fast_cfg = replace(cfg, base_speed=FAST_SPEED)
    made: dict[int, BaseChoice] = {}

    def real(q: int) -> int:
        made[q] = encode(array, q, 1, cfg)
        return len(made[q].data)

    q = largest_fitting(real, lambda q: len(encode(array, q, 1, fast_cfg).data), target_bytes,
                        _TYPICAL_RATIO.get(cfg.base_speed, 1.0))
    pick = lambda c: BaseChoice(c.data, c.quality, scale, c.bare)  # noqa: E731
    return (pick(made[q]), None) if q is not None else (None, pick(made[0]))


def _squared_error(choice: BaseChoice, array: np.ndarray) -> float:
    """Sum of squared errors of a choice's decode (upsampled as the decoder does) in [-1, 1]."""
    return _remembered("error", array, (choice,), lambda: _error(choice, array))


def _error(choice: BaseChoice, array: np.ndarray) -> float:
    h, w = array.shape[:2]
    x = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)[None].float()
    y = decode_choice(choice, h, w)
    return float(((y - x.div(127.5).sub(1.0)) ** 2).sum())


def _screen(array: np.ndarray, target_bytes: int, scale: int, cfg: RefineConfig,
            ratio: float, lowest: int = 0) -> tuple[float, int] | None:
    """(squared error, quality) of the fast encoder's (libaom speed 10) highest quality at
    ``scale`` whose size × ``ratio`` (the real/fast size ratio) fits, searched from
    ``lowest`` up; None when none fits. A cheap stand-in for the real search, to rank
    downscales: its errors are all a little larger than real encodes' at the same bytes."""
    small = _resized(array, scale)
    fast_cfg = replace(cfg, base_speed=FAST_SPEED)
    lo, hi, best = lowest, 100, None
    while lo <= hi:
        q = (lo + hi) // 2
        c = encode(small, q, 1, fast_cfg)
        if len(c.data) * ratio <= target_bytes:
            best, lo = c, q + 1
        else:
            hi = q - 1
    if best is None:
        return None
    return _squared_error(BaseChoice(best.data, best.quality, scale, best.bare), array), \
        best.quality


def search(array: np.ndarray, target_bytes: int, cfg: RefineConfig,
           ladder: tuple[int, ...] | None = None) -> BaseChoice:
    """The best base within ``target_bytes``. Walks the downscales of ``ladder`` (default:
    :func:`cdc.refine.downscale.ladder` of the model's scales: 1, 4/3, 3/2, 2, 8/3, 3, 4),
    smallest first: the real search (:func:`_best_fitting`) until one fits; if its quality
    is under :data:`TRY_NEXT_SCALE_BELOW`, the next downscales are ranked with fast encodes
    (:func:`_screen`, until one reaches that quality), the best-ranked (see
    :data:`SCREENED_CANDIDATES`) get the real search too, and the real candidate that decodes
    closest to the original wins (the encoder sees it; MSE, a fidelity measure, not an
    evaluation metric). If nothing fits, the smallest encoding found (over budget)."""
    smallest: BaseChoice | None = None
    scales = list(ladder if ladder is not None else downscale.ladder(cfg.scales))
    first: BaseChoice | None = None
    while scales and first is None:
        scale = scales.pop(0)
        first, low = _best_fitting(array, target_bytes, scale, cfg)
        if low is not None and (smallest is None or len(low.data) < len(smallest.data)):
            smallest = low
    if first is None:
        assert smallest is not None
        return smallest
    if first.quality >= TRY_NEXT_SCALE_BELOW or not scales:
        return first
    # Rank the first fit and the smaller downscales alike, by fast encodes at their budget.
    fast_first = encode(array, first.quality, first.scale, replace(cfg, base_speed=FAST_SPEED))
    ratio = len(first.data) / max(1, len(fast_first.data))
    ranked = _screen(array, target_bytes, first.scale, cfg, ratio)
    screened = [(ranked[0], first.scale)] if ranked else []
    lowest = ranked[1] if ranked else 0
    for scale in scales:
        got = _screen(array, target_bytes, scale, cfg, ratio, lowest)
        if got is None:
            continue
        screened.append((got[0], scale))
        lowest = got[1]
        if got[1] >= TRY_NEXT_SCALE_BELOW:
            break
    found = [first]
    ranked_best = min(screened)[0] if screened else 0.0
    for error, scale in sorted(screened)[:SCREENED_CANDIDATES]:
        if scale != first.scale and error <= ranked_best * (1 + SCREEN_MARGIN):
            other, _ = _best_fitting(array, target_bytes, scale, cfg)
            if other is not None:
                found.append(other)
    return min(found, key=lambda c: _squared_error(c, array))


def _resized(array: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return array

    def make() -> np.ndarray:
        h, w = scaled_size(array.shape[0], array.shape[1], scale)
        return np.asarray(Image.fromarray(array).resize((w, h), Image.LANCZOS))
    return _remembered("resize", array, (int(scale),), make)
