"""DiffC's addressable candidates (issue 26): Philox words, the table normal transform, and
scheme-1 reverse-channel coding, where the decoder computes only the chosen candidates.

Bit-exactness is checked against an independent reference (Random123's known answers, a
pure-Python Philox) and between every way of drawing the same numbers: one candidate at a
time, all chunks at once, in blocks of any size, on any torch thread count.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from cdc.diffc import philox, rcc
from cdc.diffc import stream as st
from cdc.diffc.model import DIFFC_CONFIGS, DiffCConfig

KEY = (0x452821E638D01377, 0xBE5466CF34E90C6C)


def test_philox_matches_random123_and_numpy():
    # Random123's kat_vectors for philox4x64_10
    assert philox.philox4x64_reference((0, 0, 0, 0), (0, 0)) == [
        0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B, 0x7E68B68AEC7BA23B]
    pi = (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89)
    assert philox.philox4x64_reference(pi, KEY) == [
        0xA528F45403E61D95, 0x38C72DBD566E9788, 0xA5A1610E72FD18B5, 0x57BD43B5E52B7FE6]
    # word w = element w % 4 of the block of counter w // 4 + 1, by NumPy and vectorised
    ref = [w for c in range(1, 41) for w in philox.philox4x64_reference((c, 0, 0, 0), KEY)]
    assert philox.words(KEY, 0, 160).tolist() == ref
    assert philox.words(KEY, 7, 101).tolist() == ref[7:108]
    big = [(1 << 40) + 3, (1 << 62) + 12345]
    assert philox.philox_blocks(KEY, np.array(big, dtype=np.uint64)).tolist() == [
        philox.philox4x64_reference((c, 0, 0, 0), KEY) for c in big]
    assert philox.philox_blocks(KEY, np.arange(1, 41, dtype=np.uint64)).reshape(-1).tolist() == ref


def test_normals_do_not_depend_on_how_they_are_drawn():
    n = 3 * philox._CHUNK * 2 + 38  # several transform passes and a ragged end
    whole = philox.normals(KEY, 0, n)
    assert whole.dtype == np.float32 and whole.shape == (n,)
    parts = np.concatenate([philox.normals(KEY, s, min(n, s + 1000) - s)
                            for s in range(0, n, 1000)])
    assert np.array_equal(whole, parts)
    assert np.array_equal(philox.normals(KEY, 2 * 12345, 4000), whole[2 * 12345: 2 * 12345 + 4000])
    assert np.array_equal(philox.normals_from_words(philox.words(KEY, 0, n // 2)), whole)
    assert not np.array_equal(philox.normals((KEY[0], KEY[1] + 1), 0, 100), whole[:100])


def test_every_word_maps_through_the_specified_transform():
    """The float32 result of every level of the inverse-CDF table, including both tails."""
    a1, b1, a2, b2, a3 = philox.tables()
    lo = np.array([0, 1, 5, (1 << 17) - 1, 1 << 17, 12345 << 17 | 777, (1 << 32) - 1,
                   (1 << 32) - (1 << 17), ((1 << 32) - 1) - (4095 << 5) - 3,
                   ((1 << 32) - (1 << 17)) + (17 << 5) + 9], dtype=np.uint64)
    z = philox.normals_from_words(lo | (lo[::-1] << np.uint64(32)))
    halves = [int(v) for pair in zip(lo.tolist(), lo[::-1].tolist()) for v in pair]
    for u, got in zip(halves, z.tolist()):
        h, f = u >> 17, u & ((1 << 17) - 1)
        if 0 < h < (1 << 15) - 1:
            want = np.float32(a1[h]) + np.float32(f) * np.float32(b1[h])
        else:
            ff = f if h else (1 << 17) - 1 - f
            h2, f2 = ff >> 5, ff & 31
            t = a3[f2] if h2 == 4095 else np.float32(a2[h2]) + np.float32(f2) * np.float32(b2[h2])
            want = t if h else -t
        assert np.float32(got) == np.float32(want), u
    assert z[0] < -6 and z[np.argmax(lo == (1 << 32) - 1) * 2] > 6  # u = 0 and 2^32−1


def test_normals_are_standard_normal():
    z = philox.normals(KEY, 0, 1 << 21).astype(np.float64)
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n) and abs(z.var() - 1) < 6 * math.sqrt(2 / n)
    assert abs((z**4).mean() - 3) < 0.03
    zs = np.sort(z)
    nd = NormalDist()
    for q in (1e-4, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1 - 1e-4):
        assert abs(zs[int(q * n)] - nd.inv_cdf(q)) < 0.02 * (1 + abs(nd.inv_cdf(q))), q
    emp = (np.arange(0, n, 997) + 0.5) / n
    ks = max(abs(nd.cdf(v) - e) for v, e in zip(zs[::997], emp))
    assert ks < 1.6 / math.sqrt(n) * 3
    # neighbouring normals (the two halves of a word, consecutive words) are uncorrelated
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5 / math.sqrt(n / 2)


@pytest.mark.parametrize("k,d", [(8, 37), (1, 3), (4, 8), (12, 1), (16, 5)])
def test_addressable_candidates_equal_the_bulk_draw(k, d):
    n_chunks = 6
    bulk = philox.candidates(KEY, k, d, 0, n_chunks)
    assert bulk.shape == (n_chunks, 1 << k, d)
    idx = np.random.default_rng(k * 100 + d).integers(0, 1 << k, n_chunks)
    idx[0], idx[-1] = 0, (1 << k) - 1
    one_by_one = np.stack([philox.candidate(KEY, k, d, c, int(i)) for c, i in enumerate(idx)])
    assert np.array_equal(one_by_one, bulk[np.arange(n_chunks), idx])
    assert np.array_equal(philox.chosen(KEY, k, d, idx), one_by_one)
    for a, b in ((0, 1), (2, 5), (5, 6)):  # any block of chunks draws the same numbers
        assert np.array_equal(philox.candidates(KEY, k, d, a, b - a), bulk[a:b])
    assert np.array_equal(philox.candidates(KEY, k, d, 0, n_chunks, workers=4), bulk)
    with pytest.raises(ValueError):
        philox.chosen(KEY, k, d, np.array([1 << k]))


def test_scheme_1_rcc_is_bit_exact_and_layout_free(monkeypatch):
    delta = torch.randn(5000, generator=torch.Generator().manual_seed(1)) * 0.12
    kl = float((delta**2).sum()) / 2 / math.log(2)
    n, k = rcc.choose_layout(kl, delta.numel(), 5.0, 7)
    idx, eps = rcc.encode(delta, n, k, seed=11, layout=st.LAYOUT_PHILOX)
    before = rcc.DECODE_DRAWS["normals"]
    dec = rcc.decode(idx, delta.numel(), n, k, seed=11, layout=st.LAYOUT_PHILOX)
    d = -(-delta.numel() // n)
    assert rcc.DECODE_DRAWS["normals"] - before == n * philox.padded_dims(d)  # not n·2^k·d
    assert torch.equal(dec, eps)
    slope = float((eps * delta).sum() / (delta**2).sum())
    assert 0.6 < slope < 1.3  # the selected sample carries the target
    # the legacy scheme draws other numbers, all of them
    idx0, eps0 = rcc.encode(delta, n, k, seed=11, layout=st.LAYOUT_STRIDED)
    before = rcc.DECODE_DRAWS["normals"]
    assert torch.equal(rcc.decode(idx0, delta.numel(), n, k, seed=11), eps0)
    assert rcc.DECODE_DRAWS["normals"] - before == n * (1 << k) * d
    assert not torch.equal(eps0, eps)
    # the encoder's choice depends on neither its block size nor the thread count
    threads = torch.get_num_threads()
    try:
        for elements, nt in ((1 << 12, 1), (1 << 16, 2), (1 << 24, 1)):
            monkeypatch.setattr(rcc, "_BLOCK_ELEMENTS", elements)
            torch.set_num_threads(nt)
            i2, e2 = rcc.encode(delta, n, k, seed=11, layout=st.LAYOUT_PHILOX)
            assert torch.equal(i2, idx) and torch.equal(e2, eps)
    finally:
        torch.set_num_threads(threads)


def test_configs_saved_before_scheme_1_keep_writing_scheme_0():
    new = DIFFC_CONFIGS["diffc-test"]
    assert new.candidates == "philox" and DIFFC_CONFIGS["ldiffc-small"].candidates == "philox"
    old = {k: v for k, v in new.to_dict().items() if k != "candidates"}
    assert DiffCConfig.from_dict(old).candidates == "mt19937"
    assert DiffCConfig.from_dict(new.to_dict()).candidates == "philox"
    with pytest.raises(ValueError, match="candidate scheme"):
        DiffCConfig.from_dict({**old, "candidates": "lcg"})


def test_both_schemes_round_trip_through_the_codec():
    from conftest import smooth_image
    from test_diffc import make_diffc_weights

    from zoo import codec_from_bytes

    codec = codec_from_bytes(make_diffc_weights(0), "t")
    img = smooth_image(20, 24, seed=5)
    for name, layout in (("philox", st.LAYOUT_PHILOX), ("mt19937", st.LAYOUT_STRIDED)):
        data, rep = codec.encode(img, candidates=name)
        p = st.parse(data)
        assert p.plan.layout == layout and st.describe(data)["candidates"] == name
        _, _, xs = codec.decode_levels(data)
        assert len(xs) == len(rep["x"]) and all(torch.equal(a, b) for a, b in zip(xs, rep["x"]))
    assert st.parse(codec.compress(img)).plan.layout == st.LAYOUT_PHILOX  # the config's
    with pytest.raises(ValueError, match="candidate scheme"):
        codec.encode(img, candidates="lcg")


def test_shipped_diffc_models_write_scheme_1_by_the_registry():
    """The weights files predate scheme 1 (their configs say mt19937, and their digest is
    what streams name, so they stay as they are); the registry's encode_defaults switch
    what their encoders write."""
    from zoo import load_codec
    from zoo.store import registry

    for name in ("diffc-small", "ldiffc-small"):
        assert registry()[name]["encode_defaults"] == {"candidates": "philox"}
        codec = load_codec(name)
        assert codec.config.candidates == "philox"
    with pytest.raises(ValueError, match="no encoder defaults"):
        codec.with_encode_defaults(unet_channels=8)
    with pytest.raises(ValueError, match="candidate scheme"):
        codec.with_encode_defaults(candidates="lcg")
    refine = load_codec("refine-avif")
    with pytest.raises(ValueError, match="no encoder defaults"):
        refine.with_encode_defaults(candidates="philox")
    assert refine.with_encode_defaults() is refine
