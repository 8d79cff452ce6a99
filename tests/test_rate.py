"""``--rate``: a bits-per-pixel target becomes a model choice (CDC, CorrDiff) or a stream
cap (progressive DiffC; tested in test_diffc.py)."""

from __future__ import annotations

import pytest

from pipeline.archive.rate import RateError, choose_model, measured_rates

REGISTRY = {
    "cdc-low": {"codec": "cdc", "rate": {"bpp": 0.1}},
    "cdc-mid": {"codec": "cdc", "rate": {"bpp": 0.2}},
    "cdc-high": {"codec": "cdc", "rate": {"bpp": 0.6}},
    "cdc-unmeasured": {"codec": "cdc"},
    "corr": {"codec": "corrdiff", "rate": {"bpp": 0.21}},
    "diffc": {"codec": "diffc"},
}


def test_nearest_measured_model_of_the_same_codec():
    assert measured_rates("cdc", REGISTRY) == {"cdc-low": 0.1, "cdc-mid": 0.2, "cdc-high": 0.6}
    assert choose_model("cdc-mid", 0.12, REGISTRY) == "cdc-low"
    assert choose_model("cdc-low", 0.25, REGISTRY) == "cdc-mid"
    assert choose_model("cdc-unmeasured", 0.5, REGISTRY) == "cdc-high"
    assert choose_model("corr", 0.2, REGISTRY) == "corr"  # never crosses codecs


def test_targets_that_cannot_be_met_name_what_there_is():
    with pytest.raises(RateError,
                       match=r"within ×1.5 .*cdc-low 0.1 bpp, cdc-mid 0.2 bpp, cdc-high 0.6 bpp"):
        choose_model("cdc-mid", 2.0, REGISTRY)
    with pytest.raises(RateError, match="not a shipped model"):
        choose_model("/some/weights.pt", 0.2, REGISTRY)
    with pytest.raises(RateError, match="positive"):
        choose_model("cdc-mid", 0.0, REGISTRY)
    with pytest.raises(RateError, match="no shipped diffc model records"):
        choose_model("diffc", 0.2, REGISTRY)


def test_shipped_registry_records_the_measured_rate_of_cdc_small():
    from zoo import registry

    reg = registry()
    assert 0.1 < reg["cdc-small"]["rate"]["bpp"] < 0.4
    assert choose_model("cdc-small", reg["cdc-small"]["rate"]["bpp"], reg) == "cdc-small"
    with pytest.raises(RateError, match="cdc-small"):
        choose_model("cdc-small", 2.0, reg)


def test_a_ladder_family_chooses_among_its_own_rungs():
    reg = {**REGISTRY,
           "lat-a": {"codec": "cdc", "family": "lat", "rate": {"bpp": 0.05}},
           "lat-b": {"codec": "cdc", "family": "lat", "rate": {"bpp": 0.15}},
           "lat-c": {"codec": "cdc", "family": "lat", "rate": {"bpp": 0.4}}}
    assert measured_rates("cdc", reg, "lat") == {"lat-a": 0.05, "lat-b": 0.15, "lat-c": 0.4}
    assert choose_model("lat-b", 0.1, reg) in {"lat-a", "lat-b"}
    assert choose_model("lat-b", 0.5, reg) == "lat-c"
    assert choose_model("lat-c", 0.06, reg) == "lat-a"
    # Models without a family never pick a rung, nor the other way round.
    assert choose_model("cdc-mid", 0.07, reg) == "cdc-low"
    with pytest.raises(RateError, match="cdc-low 0.1 bpp"):
        choose_model("cdc-mid", 0.05, reg)  # lat-a is 0.05 bpp, but of another family
    assert choose_model("lat-a", 0.6, reg) == "lat-c"
    with pytest.raises(RateError, match=r"within ×1.5 of that in the lat family .*lat-a 0.05 bpp"):
        choose_model("lat-a", 3.0, reg)
