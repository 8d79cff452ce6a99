"""BD-rate: known answers on synthetic curves, and what cdc eval adds to its summary."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.evaluation.bdrate import bd_rate, bd_rates
from pipeline.evaluation.runner import add_bd_rates

RATES = (0.05, 0.1, 0.2, 0.4)


def lpips_like(r: float) -> float:
    return 0.6 * math.exp(-4 * r) + 0.05


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.0, 1.5])
def test_a_curve_needing_factor_times_the_rate(factor):
    anchor = [(r, lpips_like(r)) for r in RATES]
    test = [(factor * r, lpips_like(r)) for r in RATES]
    assert bd_rate(anchor, test) == pytest.approx(factor - 1, abs=1e-9)


def test_no_overlap_or_too_few_points_is_none():
    anchor = [(r, lpips_like(r)) for r in RATES]
    assert bd_rate(anchor, [(0.1, 0.3)]) is None
    assert bd_rate(anchor, [(1, 0.001), (2, 0.0005)]) is None


def test_summary_gets_bd_rates_per_family(tmp_path):
    entries = {}
    for r in RATES:
        entries[f"avif@{r}"] = {"family": "AVIF", "bpp": r, "lpips_alex": lpips_like(r),
                                "dists": lpips_like(r) / 2}
        entries[f"ours@{r}"] = {"family": "CDC ladder (s1, γ=0)", "bpp": r / 2,
                                "lpips_alex": lpips_like(r), "dists": lpips_like(r) / 2}
    summary = {"metrics": ["lpips_alex", "dists"], "entries": entries}
    (tmp_path / "summary.json").write_text("{}")
    lines = add_bd_rates(summary, tmp_path)
    got = json.loads((tmp_path / "summary.json").read_text())["bd_rate"]
    fam = got["families"]["CDC ladder (s1, γ=0)"]
    assert fam["lpips_alex"] == pytest.approx(-0.5) and fam["dists"] == pytest.approx(-0.5)
    assert got["anchor"] == "AVIF" and any("-50.0 %" in line for line in lines)
    assert bd_rates(summary, "HEIC") == {}
