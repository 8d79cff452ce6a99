"""Bjøntegaard delta rate: how much less (negative) or more rate a curve needs for the
same quality as an anchor curve, averaged over the qualities both reach.

Rates are compared in log space against the quality metric, each curve interpolated with
a monotone piecewise cubic (PCHIP, as in current BD-rate tools rather than the original
cubic polynomial fit, which overshoots on 3–4 points). Works for any metric: for "lower is
better" metrics (LPIPS, DISTS) only the axis direction differs, the integral is the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Metrics where a smaller value is better.
LOWER_IS_BETTER = {"lpips_alex", "lpips_vgg", "dists", "fid"}


def _curve(points: Sequence[tuple[float, float]]):
    """(metric values increasing, log-rate) after dropping non-monotone points."""
    from scipy.interpolate import PchipInterpolator

    pts = sorted((m, math.log(r)) for r, m in points if r and r > 0 and m is not None
                 and math.isfinite(m))
    xs, ys = [], []
    for m, lr in pts:
        if xs and m <= xs[-1]:
            continue  # equal metric twice: keep the lower rate (first after sorting)
        xs.append(m)
        ys.append(lr)
    if len(xs) < 2:
        return None
    return np.array(xs), PchipInterpolator(np.array(xs), np.array(ys))


def bd_rate(anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]],
            samples: int = 200) -> float | None:
    """BD-rate of ``test`` against ``anchor``, both lists of (bpp, metric); a fraction
    (−0.5 = the test needs half the anchor's rate). None without two points each or
    without a common metric interval."""
    a, t = _curve(anchor), _curve(test)
    if a is None or t is None:
        return None
    lo, hi = max(a[0][0], t[0][0]), min(a[0][-1], t[0][-1])
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, samples)
    # uniform grid: the mean is the integral / (hi - lo)
    diff = float(np.mean(t[1](grid) - a[1](grid)))
    return math.exp(diff) - 1


def bd_rates(summary: dict[str, Any], anchor_family: str,
             metrics: Sequence[str] = ("lpips_alex", "dists")) -> dict[str, dict[str, Any]]:
    """BD-rate of every other family in a ``cdc eval`` summary against ``anchor_family``,
    per metric: {family: {metric: fraction or None, "points": n}}."""
    fams: dict[str, list[dict[str, Any]]] = {}
    for s in summary["entries"].values():
        fams.setdefault(s["family"], []).append(s)
    if anchor_family not in fams:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for fam, entries in fams.items():
        if fam == anchor_family:
            continue
        res: dict[str, Any] = {"points": len(entries)}
        for m in metrics:
            res[m] = bd_rate([(s["bpp"], s.get(m)) for s in fams[anchor_family]],
                             [(s["bpp"], s.get(m)) for s in entries])
        out[fam] = res
    return out
