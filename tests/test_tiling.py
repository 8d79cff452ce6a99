"""The shared tiled loop (cdc.tiling): tiles equal the whole map; when it runs whole."""

from __future__ import annotations

import numpy as np

from cdc import tiling


def test_tiles_equal_the_whole_map():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 45, 70)).astype(np.float32)

    def box3(t):  # a local op with a 1-pixel radius, zero outside the image
        p = np.pad(t, ((0, 0), (0, 0), (1, 1), (1, 1)))
        return sum(p[..., i:i + t.shape[2], j:j + t.shape[3]] for i in range(3) for j in range(3))

    calls = []

    def counted(t):
        calls.append(t.shape)
        return box3(t)

    np.testing.assert_allclose(tiling.tiled(counted, x, 16, 4, 1, 1), box3(x), atol=1e-5)
    assert len(calls) == 15  # 3 rows x 5 columns of 16-px tiles
    calls.clear()
    np.testing.assert_allclose(tiling.tiled(counted, x, 50, 4, 1, 1), box3(x), atol=1e-5)
    assert calls == [x.shape]  # 45x70 px: fewer than one 58x58 tile (though 70 > 58): one call


def test_whole_when_no_larger_than_a_tile():
    assert tiling.whole(512, 768, 512, 64) and tiling.call_area(512, 768, 512, 64) == 512 * 768
    assert not tiling.whole(640, 641, 512, 64)
    assert tiling.call_area(100, 5000, 512, 64) == 100 * 640
    assert tiling.call_area(5000, 5000, 512, 64) == 640 * 640
