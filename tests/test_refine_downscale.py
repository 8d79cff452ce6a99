"""Fractional downscales of the refine base layer: codes, sizes, streams and the search."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from cdc.bitstream import Container, symbols_crc
from cdc.errors import CorruptStreamError
from cdc.refine import base_layer, downscale
from cdc.refine.config import REFINE_CONFIGS, RefineConfig
from cdc.refine.stream import describe
from tests.conftest import smooth_image
from tests.tiny_refine import latent_refine_bytes
from zoo import codec_from_bytes


def test_every_code_is_one_factor_and_every_factor_one_code():
    factors = {}
    for c in range(-1, 300):
        try:
            f = downscale.factor(c)
        except ValueError:
            continue
        assert downscale.code(f) == c and f not in factors
        factors[f] = c
    # the codes every stream before fractional downscales held keep their meaning
    assert {factors[Fraction(s)] for s in (1, 2, 4, 8)} == {1, 2, 4, 8}
    assert downscale.code(4 / 3) == 0x80 | 16 and downscale.code(3) == 0x80 | 36
    assert downscale.code(2.0) == 2 and downscale.label(0x80 | 16) == "x4/3"
    assert min(factors) == 1 and max(factors) == Fraction(127, 12)
    for bad in (0.5, 2.2, 1.04, 11, float("nan")):
        with pytest.raises(ValueError):
            downscale.code(bad)
    for bad in (0, 3, 5, 0x80 | 12, 0x80 | 24, 0x80 | 48, 0x80, 256):
        with pytest.raises(ValueError):
            downscale.factor(bad)


@pytest.mark.parametrize("h,w", [(512, 768), (321, 481), (1, 7), (99, 403)])
def test_scaled_size_is_the_ceiling_of_the_exact_quotient(h, w):
    for s in (1, 2, 4, 8):  # old streams: exactly the size they were written with
        assert downscale.scaled_size(h, w, s) == (max(1, math.ceil(h / s)),
                                                  max(1, math.ceil(w / s)))
    for f in downscale.FINE_LADDER:
        got = downscale.scaled_size(h, w, downscale.code(f))
        assert got == (max(1, math.ceil(Fraction(h) / f)), max(1, math.ceil(Fraction(w) / f)))
    assert downscale.scaled_size(512, 768, downscale.code(Fraction(4, 3))) == (384, 576)


def test_the_ladder_fills_in_between_the_models_octaves():
    assert [downscale.label(c) for c in downscale.ladder((1, 2, 4))] == [
        "x1", "x4/3", "x3/2", "x2", "x8/3", "x3", "x4"]
    assert downscale.ladder((1,)) == (1,)
    assert downscale.code(Fraction(5, 4)) in downscale.ladder((1, 1.25))
    with pytest.raises(ValueError, match="downscale 2.2"):
        RefineConfig(scales=(1, 2.2))


def test_the_search_keeps_the_closest_real_candidate_and_fractions_win_some():
    """The search takes the first downscale that fits, ranks the next ones with fast encodes
    and gives the best-ranked the real search: what it returns fits, is the closest of the
    real candidates it made, is never farther than the first fit alone, and on some budget
    here is a factor octaves cannot take, strictly closer than octaves' pick."""
    cfg = replace(REFINE_CONFIGS["refine-test"], base_bare=True)
    arr = smooth_image(192, 256, seed=11)
    full0 = len(base_layer.encode(arr, 0, 1, cfg).data)
    made: list = []
    real = base_layer._best_fitting

    def spy(*args, **kw):
        got = real(*args, **kw)
        if got[0] is not None:
            made.append(got[0])
        return got

    wins = []
    for budget in (int(full0 * 0.6), full0, int(full0 * 1.5), full0 * 3):
        made.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(base_layer, "_best_fitting", spy)
            choice = base_layer.search(arr, budget, cfg)
        assert len(choice.data) <= budget and made
        errors = [base_layer._squared_error(c, arr) for c in made]
        assert base_layer._squared_error(choice, arr) == min(errors) <= errors[0]
        octave = base_layer.search(arr, budget, cfg, ladder=(1, 2, 4))
        if base_layer._squared_error(choice, arr) < base_layer._squared_error(octave, arr):
            wins.append(downscale.factor(choice.scale))
    assert any(f not in (1, 2, 4) for f in wins), wins


def test_a_first_fit_at_a_high_quality_ends_the_search_at_once(monkeypatch):
    """Where the full size fits at TRY_NEXT_SCALE_BELOW or more, no other downscale is tried
    (the mid and high rates cost what they cost before the fine ladder)."""
    cfg = replace(REFINE_CONFIGS["refine-test"], base_bare=True)
    arr = smooth_image(96, 128, seed=4)
    budget = len(base_layer.encode(arr, 80, 1, cfg).data)
    calls = []
    monkeypatch.setattr(base_layer, "_screen", lambda *a, **k: calls.append(a) or None)
    choice = base_layer.search(arr, budget, cfg)
    assert choice.scale == 1 and choice.quality >= base_layer.TRY_NEXT_SCALE_BELOW
    assert not calls


@pytest.fixture(scope="module")
def codec():
    return codec_from_bytes(latent_refine_bytes(0), "test")


def _fractional_stream(codec, monkeypatch, factor: Fraction, img: np.ndarray) -> bytes:
    monkeypatch.setattr(downscale, "ladder", lambda scales: (downscale.code(factor),))
    return codec.with_rate(0.3).compress(Image.fromarray(img))


@pytest.mark.parametrize("factor", [Fraction(4, 3), Fraction(3, 2), Fraction(8, 3)])
def test_a_fractional_base_decodes_at_the_image_size(codec, monkeypatch, factor):
    img = smooth_image(70, 101, seed=2)
    data = _fractional_stream(codec, monkeypatch, factor, img)
    info = describe(data)
    assert f"downscale x{factor}" in info["base_layer"]
    base = Container.unpack(data).sections["B"]
    assert base[0] == downscale.code(factor)
    for steps in (0, 1):
        out = np.asarray(codec.decompress(data, steps=steps))
        assert out.shape == img.shape
        mse = ((out.astype(float) - img) ** 2).mean()
        assert 10 * np.log10(255 ** 2 / mse) > 20  # the picture, upsampled, not noise


def test_an_unknown_downscale_code_is_a_corrupt_stream_not_a_crash(codec):
    data = codec.with_rate(quality=30).compress(Image.fromarray(smooth_image(40, 56)))
    c = Container.unpack(data)
    for bad in (0, 3, 0x7F, 0x80 | 12, 0x80 | 48):
        b = bytes([bad]) + c.sections["B"][1:]
        crafted = Container(c.codec, c.model_digest, c.height, c.width, symbols_crc(b),
                            c.flags, {"B": b, "W": c.sections["W"]}).pack()
        with pytest.raises(CorruptStreamError, match=f"downscale code {bad} invalid"):
            codec.decompress(crafted, steps=0)
