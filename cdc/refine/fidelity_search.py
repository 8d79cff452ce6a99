"""The fewest base-layer bytes that reach a PSNR: constant fidelity instead of constant rate.

A collection coded at one rate gives every photo the same bits per pixel; a fidelity target
(``cdc archive --psnr DB``) gives each photo what it takes to reach DB dB: a floor per photo.
At the same total bytes that lifts the worst photo and lowers the average, in PSNR and
LPIPS-VGG alike (docs/results/refine-validation/fidelity-target), so it is for images that
must each reach a fidelity, not a better use of a budget. The base layer is
what the target is measured on (the refined tiers stay within their stored bound of it,
0.5 dB for the standard tier, and are usually level with it).

The search is over the byte budget of the rate search (:func:`cdc.refine.base_layer.search`,
downscale ladder included), so at every budget the base is the best one the rate-controlled
encoder would make. The base PSNR grows about linearly in log(bytes); a safeguarded secant
(regula falsi, Illinois) on log(budget) brackets the target. Once the encodings at the two
ends share a downscale, the answer lies between their qualities at that downscale, and a
secant over the quality itself finds the lowest that reaches the target, one encode a step.
Encodes are shared between the searches (:func:`cdc.refine.base_layer.memoised`). An
optional byte cap bounds what a photo may take (noise and film grain can ask for a great
deal).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: The PSNR targets an encoder takes (dB): under 15 a photo is barely recognisable, over 60
#: its 8-bit samples are all but exact.
MIN_PSNR, MAX_PSNR = 15.0, 60.0
#: Stop when the bracket's budgets are within this ratio: AVIF's quality steps are 5-10 % in
#: size, so a closer bracket finds the same encoding again.
BRACKET = 1.04
#: Searches before giving the best encoding found that reaches the target.
MAX_SEARCHES = 9
#: First guess: a stream of this many bits per pixel (the model's default rate).
FIRST_BPP = 0.15
#: The largest base a search makes when not capped, in bits per pixel (AVIF reaches ≈ 45-50
#: dB there on photos; a target above what a photo reaches at it gives the largest).
MAX_BPP = 4.0
#: Typical PSNR gain per doubling of the base's bytes, for the first step (any value gives
#: a correct answer; a good one fewer searches).
DB_PER_DOUBLING = 3.0


@dataclass(frozen=True)
class FidelityResult:
    """What the search found: the encoding, its PSNR, and how many tries it took (rate
    searches and, at the end, single encodes)."""

    choice: object  # a cdc.refine.base_layer.BaseChoice
    psnr: float
    reached: bool  # False: no budget up to the cap reaches the target
    searches: int


def psnr_of(squared_error: float, pixels: int) -> float:
    """PSNR (dB) of a [-1, 1] image from its sum of squared errors over ``pixels`` × 3."""
    mse = squared_error / (3 * pixels)
    return 10 * math.log10(4 / max(mse, 1e-12))


Tried = tuple[object, int, float]  # (encoding, its size, its PSNR)


def smallest_reaching(attempt: Callable[[int], Tried], target_db: float, first_budget: int,
                      max_budget: int,
                      between: Callable[[Tried, Tried], list[Tried] | None] | None = None
                      ) -> FidelityResult:
    """The smallest encoding whose PSNR reaches ``target_db``, over budgets up to
    ``max_budget``. ``attempt(budget)`` returns (encoding, its size, its PSNR): the best the
    encoder makes within the budget, so every budget from its size to ``budget`` gives it too.

    The bracket is [the largest budget whose encoding falls short, the smallest encoding that
    reaches]; its next point is the secant's zero in log(bytes) (Illinois-weighted), or its
    geometric middle when the last step did not halve it. ``between(short, reaching)``, once
    there is a bracket, may finish the search another way: the encodings it returns are the
    last tried (None: go on)."""
    tried: dict[int, Tried] = {}
    lo: list[float] | None = None  # [log budget, psnr − target]: falls short
    hi: list[float] | None = None  # [log size, psnr − target]: reaches
    moved, width = "", math.inf
    budget = min(max_budget, max(1, first_budget))
    while len(tried) < MAX_SEARCHES and budget not in tried:
        _, size, p = tried[budget] = attempt(budget)
        end = "hi" if p >= target_db else "lo"
        point = [math.log(max(1, size) if end == "hi" else budget), p - target_db]
        if end == moved:  # Illinois: the other end was kept twice, weigh it down
            other = lo if end == "hi" else hi
            if other is not None:
                other[1] /= 2
        moved = end
        if end == "hi" and (hi is None or point[0] <= hi[0]):
            hi = point
        elif end == "lo" and (lo is None or point[0] >= lo[0]):
            lo = point
        if hi is None and budget >= max_budget or lo is None and budget <= 1:
            break  # the cap does not reach the target / even 1 byte does
        if lo is None or hi is None:
            budget = _step_from(lo or hi, max_budget)
            continue
        if hi[0] - lo[0] <= math.log(BRACKET):
            break
        if between is not None:
            short = max((v for v in tried.values() if v[2] < target_db), key=lambda v: v[1])
            reach = min((v for v in tried.values() if v[2] >= target_db), key=lambda v: v[1])
            more = between(short, reach)
            if more is not None:
                tried.update({-1 - i: v for i, v in enumerate(more)})
                break
        bisect = hi[0] - lo[0] > width / 2
        width = hi[0] - lo[0]
        x = (lo[0] + hi[0]) / 2 if bisect else _secant(lo, hi)
        budget = max(1, min(max_budget, round(math.exp(x))))
    return _smallest(tried, target_db, len(tried))


def _step_from(end: list[float], max_budget: int) -> int:
    """One end known: a step by the typical slope toward the target, at least ×1.25."""
    x, r = end
    step = max(abs(r) / DB_PER_DOUBLING * math.log(2) * 1.1, math.log(1.25))
    return max(1, min(max_budget, round(math.exp(x + (step if r < 0 else -step)))))


def _secant(lo: list[float], hi: list[float]) -> float:
    """The zero of the line through the ends, kept off them so the bracket shrinks."""
    (xl, rl), (xh, rh) = lo, hi
    x = xl + (xh - xl) * (-rl) / max(rh - rl, 1e-12)
    margin = (xh - xl) * 0.1
    return min(xh - margin, max(xl + margin, x))


def _smallest(tried: dict[int, Tried], target_db: float,
              searches: int) -> FidelityResult:
    reaching = [v for v in tried.values() if v[2] >= target_db]
    if reaching:
        choice, _, p = min(reaching, key=lambda v: v[1])
        return FidelityResult(choice, p, True, searches)
    choice, _, p = max(tried.values(), key=lambda v: v[2])
    return FidelityResult(choice, p, False, searches)


def lowest_quality(at: Callable[[int], Tried], target_db: float, short: Tried,
                   reach: Tried) -> list[Tried]:
    """The encodings tried, between a quality that falls short and one that reaches the
    target (the same downscale), to find the lowest that reaches: a secant over quality,
    bisection when a step does not halve the bracket."""
    lo, hi = (short[0].quality, short[2]), (reach[0].quality, reach[2])
    out: list[Tried] = []
    width = math.inf
    while hi[0] - lo[0] > 1:
        if hi[0] - lo[0] > width / 2:
            q = (lo[0] + hi[0]) // 2
        else:
            frac = (target_db - lo[1]) / max(hi[1] - lo[1], 1e-9)
            q = round(lo[0] + frac * (hi[0] - lo[0]))
        width = hi[0] - lo[0]
        q = min(hi[0] - 1, max(lo[0] + 1, q))
        got = at(q)
        out.append(got)
        if got[2] >= target_db:
            hi = (q, got[2])
        else:
            lo = (q, got[2])
    return out


def search(array: np.ndarray, target_db: float, cfg, max_bytes: int | None = None
           ) -> FidelityResult:
    """The fewest-bytes base of an (H, W, 3) uint8 image whose decode reaches ``target_db``
    dB PSNR, within ``max_bytes`` when given (else :data:`MAX_BPP`)."""
    from cdc.refine import base_layer

    h, w = array.shape[:2]
    pixels = h * w

    def measured(c) -> Tried:
        return c, len(c.data), psnr_of(base_layer._squared_error(c, array), pixels)

    def attempt(budget: int) -> Tried:
        return measured(base_layer.search(array, budget, cfg))

    def between(short: Tried, reach: Tried) -> list[Tried] | None:
        if short[0].scale != reach[0].scale:
            return None
        scale = reach[0].scale
        return lowest_quality(lambda q: measured(base_layer.encode(array, q, scale, cfg)),
                              target_db, short, reach)

    cap = max_bytes if max_bytes is not None else round(MAX_BPP * pixels / 8)
    first = min(cap, max(1, round(FIRST_BPP * pixels / 8)))
    with base_layer.memoised():  # the searches share their encodes
        return smallest_reaching(attempt, target_db, first, cap, between)
