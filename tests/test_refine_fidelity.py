"""The refine encoder's fidelity target (``--psnr``): the fewest bytes that reach a PSNR."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import smooth_image
from PIL import Image

from cdc.refine import fidelity_search
from cdc.refine.fidelity_search import MAX_SEARCHES, smallest_reaching
from tests.tiny_refine import refine_bytes
from zoo import codec_from_bytes


def staircase(step: float = 1.07, db_per_doubling: float = 2.5):
    """An encoder whose sizes move in quality steps of ``step`` and whose PSNR grows with
    log(size): (attempt, the calls made)."""
    calls: list[int] = []

    def attempt(budget: int):
        calls.append(budget)
        q = math.floor(math.log(budget / 100) / math.log(step))
        size = max(1, int(100 * step ** q))
        return q, size, 20 + db_per_doubling * math.log2(size / 1000)
    return attempt, calls


@pytest.mark.parametrize("target", [15.5, 22.0, 26.3, 30.0, 38.0])
def test_the_smallest_encoding_that_reaches_the_target(target):
    attempt, calls = staircase()
    got = smallest_reaching(attempt, target, 2000, 10 ** 7)
    assert got.reached and got.psnr >= target and got.searches == len(calls) <= MAX_SEARCHES
    # the quality step just under the answer falls short: nothing smaller reaches
    below = int(100 * 1.07 ** (got.choice - 1))
    assert 20 + 2.5 * math.log2(below / 1000) < target


def test_an_unreachable_target_gives_the_best_within_the_cap():
    attempt, calls = staircase()
    got = smallest_reaching(attempt, 59.0, 2000, 50_000)
    assert not got.reached and max(calls) == 50_000
    assert got.choice == attempt(50_000)[0]  # the largest encoding the cap allows
    assert len(calls) <= 3  # it stops at the cap, no search beyond it


def test_a_target_every_budget_reaches_gives_the_smallest():
    attempt, _ = staircase()
    got = smallest_reaching(attempt, -1000.0, 2000, 10 ** 7)
    assert got.reached and got.choice == attempt(1)[0]


@pytest.fixture(scope="module")
def codec():
    return codec_from_bytes(refine_bytes(0), "test")


def test_psnr_targets_spend_bytes_where_the_image_needs_them(codec):
    """A higher target costs more bytes and its base reaches it; a detailed image takes more
    bytes than a smooth one for the same target, where a rate target gives both the same."""
    smooth = smooth_image(64, 96, seed=2)
    rng = np.random.default_rng(0)
    grain = rng.normal(0, 20, smooth.shape[:2])[..., None]  # luma detail (4:2:0 keeps it)
    busy = np.clip(smooth.astype(int) + grain, 0, 255).astype(np.uint8)
    sizes = {}
    for name, img in (("smooth", smooth), ("busy", busy)):
        for target in (26.0, 30.0):
            (data, recons), = codec.with_rate(psnr=target).compress_with_reconstructions(
                [Image.fromarray(img)])
            base = np.asarray(codec.decompress(data, steps=0)).astype(float)
            got = 10 * np.log10(255 ** 2 / ((base - img) ** 2).mean())
            assert got >= target - 0.01, (name, target, got)
            sizes[name, target] = len(data)
    assert sizes["smooth", 30.0] > sizes["smooth", 26.0]
    assert sizes["busy", 30.0] > 2 * sizes["smooth", 30.0]
    # --rate as a cap: the stream stays within it, the target then unmet
    data = codec.with_rate(1.0, psnr=45.0).compress(Image.fromarray(busy))
    assert 8 * len(data) / busy.shape[0] / busy.shape[1] <= 1.0


def test_bad_targets_are_refused(codec):
    for bad in (float("nan"), 14.0, 61.0):
        with pytest.raises(ValueError, match="PSNR target"):
            codec.with_rate(psnr=bad)
    with pytest.raises(ValueError, match="not both"):
        codec.with_rate(quality=30, psnr=30.0)
    with pytest.raises(ValueError, match="positive"):
        codec.with_rate(-1.0, psnr=30.0)


def test_cli_compress_to_a_psnr(tmp_path):
    w = tmp_path / "w.pt"
    w.write_bytes(refine_bytes(0))
    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(64, 96, seed=7)).save(src)
    run = lambda *a: subprocess.run([sys.executable, "-m", "jobs.cli", *a],  # noqa: E731
                                    capture_output=True, text=True)
    r = run("compress", str(src), str(tmp_path / "a.cdc"), "-m", str(w), "--psnr", "29")
    assert r.returncode == 0, r.stderr
    base = float(r.stdout.split("PSNR ")[1].split(" dB base")[0])
    assert base >= 29 and "not reached" not in r.stdout
    r = run("compress", str(src), str(tmp_path / "b.cdc"), "-m", str(w), "--psnr", "55",
            "--rate", "1")
    assert r.returncode == 0 and "the target 55 dB is not reached within the --rate cap" \
        in r.stdout, r.stdout + r.stderr
    assert 8 * (tmp_path / "b.cdc").stat().st_size / (64 * 96) <= 1
    for argv, text in ((["--psnr", "99"], "15..60 dB"),
                       (["--psnr", "30", "-m", "cdc-small"], "cannot aim at a PSNR")):
        r = run("compress", str(src), str(tmp_path / "c.cdc"), *(["-m", str(w)] + argv
                                                                  if "-m" not in argv else argv))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and text in lines[0], r.stderr
        assert not (tmp_path / "c.cdc").exists()


def test_psnr_of_a_squared_error_sum():
    assert fidelity_search.psnr_of(4 * 3 * 10, 10) == pytest.approx(0.0)
    assert fidelity_search.psnr_of(4 * 3 * 10 / 100, 10) == pytest.approx(20.0)


def test_memoised_searches_share_their_encodes_and_give_the_same_answer(codec, monkeypatch):
    from cdc.refine import base_layer

    img = smooth_image(48, 80, seed=3)
    calls = []
    real = base_layer._encode
    monkeypatch.setattr(base_layer, "_encode", lambda *a: calls.append(a[1:3]) or real(*a))
    plain = base_layer.search(img, 600, codec.config)
    n_plain = len(calls)
    calls.clear()
    with base_layer.memoised():
        first = base_layer.search(img, 600, codec.config)
        n_first = len(calls)
        again = base_layer.search(img, 600, codec.config)
    assert first == plain == again and n_first == n_plain
    assert len(calls) == n_first  # the second search encoded nothing new
    assert base_layer._MEMO.get() is None  # and the memo ends with the block
