"""The highest quality whose encoding fits a byte budget, in few costly encodes.

A real encode (the model's AVIF speed) is most of the search's cost. A fast encode of the same
image (libaom's speed 10: 7-11× faster on a Kodak image) is larger at the same quality (by 6 %
at the median of validation photos, up to ≈ 20 %) but follows the real size's shape across
qualities, so it predicts where the budget falls: the fast curve is searched for the budget
(scaled by the latest real/fast size ratio), the real encoder confirms the guess and tries its
neighbour on the far side of the budget, which usually closes the bracket in two real encodes.
Where the predictions miss twice, the search bisects. The answer is always the largest quality
that fits wherever the real size grows with quality (what bisection over real encodes
returns), whatever the predictor says.
"""

from __future__ import annotations

import math
from collections.abc import Callable

#: Quality range of the search (Pillow's AVIF quality).
QUALITIES = range(0, 101)
#: Typical growth of log(AVIF size) per quality step (speed 6, 4:2:0) for the predictor's
#: first probes: any value gives the same answer, a good one fewer encodes (chosen among
#: 0.03-0.05 on 30 validation-split photos at 5 rates and 3 scales, 2026-12-06).
_LOG_SIZE_PER_QUALITY = 0.04
#: Predictor rounds (guess + neighbour) that may miss before the search bisects instead.
_ROUNDS_BEFORE_BISECTING = 2


def largest_fitting(real: Callable[[int], int], fast: Callable[[int], int], budget: int,
                    ratio: float = 1.0) -> int | None:
    """The largest quality q in 0..100 with ``real(q) <= budget``, or None when quality 0
    does not fit. ``real`` and ``fast`` give an encoding's size at a quality (each called at
    most once per quality); ``ratio`` is the expected ``real(q) / fast(q)`` before any real
    encode has measured it."""
    fast_sizes: dict[int, int] = {}

    def predicted(q: int) -> int:
        if q not in fast_sizes:
            fast_sizes[q] = fast(q)
        return fast_sizes[q]

    lo, hi = QUALITIES.start - 1, QUALITIES.stop  # lo fits (or none), hi does not (or none)

    def probe(q: int) -> bool:
        nonlocal lo, hi, ratio
        size = real(q)
        ratio = size / max(1, predicted(q))
        if size <= budget:
            lo = q
            return True
        hi = q
        return False

    rounds = 0
    while hi - lo > 1:
        if rounds >= _ROUNDS_BEFORE_BISECTING:
            probe((lo + hi) // 2)
            continue
        q = _largest_predicted(predicted, budget / ratio, lo + 1, hi - 1)
        neighbour = q + 1 if probe(q) else q - 1
        if lo < neighbour < hi:
            probe(neighbour)
        rounds += 1
    return lo if lo >= QUALITIES.start else None


def _largest_predicted(size: Callable[[int], int], budget: float, a: int, b: int) -> int:
    """The largest q in [a, b] with ``size(q) <= budget`` (``a`` if none), in few calls of
    ``size`` where it grows about exponentially (as AVIF's does): probes extrapolate from
    ``a`` at a typical growth, reaching twice as far each time, until one is too large; then
    each interpolates log(size) across the bracket, the quality next to it on the far side of
    the budget is tried next, which usually closes the bracket, and bisection takes over where
    that does not close a bracket of more than 8 qualities."""
    if size(a) > budget:
        return a
    lo, hi, hi_size = a, b + 1, 0  # lo fits; hi does not (b + 1: not tried)
    last, last_q, reach = "", -1, 1.0  # how the last probe was chosen; its quality
    while hi - lo > 1:
        if last == "interpolated":  # its neighbour on the far side of the budget
            q, step = (lo + 1 if lo == last_q else hi - 1), "neighbour"
        elif last == "neighbour" and hi - lo > 8:
            q, step = (lo + hi) // 2, "bisected"
        elif not hi_size:
            grow = math.log(budget / max(1, size(lo))) / _LOG_SIZE_PER_QUALITY
            q, step = min(b, max(lo + 1, lo + round(reach * grow))), "extrapolated"
            reach *= 2
        else:
            x, y = math.log(max(1, size(lo))), math.log(hi_size)
            frac = (math.log(budget) - x) / max(y - x, 1e-9)
            q, step = min(hi - 1, max(lo + 1, lo + round(frac * (hi - lo)))), "interpolated"
        if size(q) <= budget:
            lo = q
        else:
            hi, hi_size = q, size(q)
        last, last_q = step, q
    return lo
