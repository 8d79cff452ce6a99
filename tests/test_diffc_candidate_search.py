"""The encoder's fused scheme-1 candidate search agrees with the NumPy definition."""

from __future__ import annotations

import numpy as np
import pytest

from cdc.diffc import candidate_search as cs
from cdc.diffc import philox

KEY = (0x0123456789ABCDEF, 0x0FEDCBA987654321)


def test_one_normal_matches_the_table_transform_bit_for_bit():
    rng = np.random.default_rng(3)
    edges = [0, 1, 31, 32, (1 << 17) - 1, 1 << 17, (1 << 31) - 1, 1 << 31,
             (1 << 32) - (1 << 17) - 1, (1 << 32) - (1 << 17), (1 << 32) - 33, (1 << 32) - 1]
    inner = rng.integers(0, 1 << 32, 4000, dtype=np.uint64)
    outer = np.concatenate([rng.integers(0, 1 << 17, 500), rng.integers((1 << 32) - (1 << 17),
                                                                        1 << 32, 500)])
    u = np.concatenate([np.array(edges, np.uint64), inner, outer.astype(np.uint64)])
    u = u.astype(np.uint32)
    ref = philox.normals_from_words(np.ascontiguousarray(
        np.stack([u, np.zeros_like(u)], 1)).view(np.uint64).reshape(-1))[0::2]
    got = np.array([cs._normal(np.uint32(v), *cs._tables()) for v in u], np.float32)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
    assert np.abs(got).max() > 5.5  # the level-3 cells were reached


@pytest.mark.parametrize("k,d,n_chunks,first", [(8, 37, 60, 5), (6, 1, 40, 0), (5, 2, 30, 3),
                                                (3, 301, 9, 1000), (12, 3, 2, 7)])
def test_the_choice_is_the_argmax_over_the_numpy_candidates(k, d, n_chunks, first):
    rng = np.random.default_rng(k * 1000 + d)
    target = rng.normal(size=(n_chunks, d)) * 0.5
    log_s = np.log(np.cumsum(rng.exponential(size=(n_chunks, 1 << k)), 1))
    cand = philox.candidates(KEY, k, d, first, n_chunks).astype(np.float64)
    scores = np.einsum("cnd,cd->cn", cand, target) - log_s
    got = cs.best_indices(KEY, k, first, target, log_s)
    assert np.array_equal(got, scores.argmax(1))
    # a sub-block of chunks chooses the same (positions are absolute)
    assert np.array_equal(cs.best_indices(KEY, k, first + 1, target[1:], log_s[1:]), got[1:])


def test_bad_shapes_are_refused_and_no_chunks_is_empty():
    with pytest.raises(ValueError):
        cs.best_indices(KEY, 4, 0, np.zeros((2, 3)), np.zeros((2, 8)))
    assert cs.best_indices(KEY, 4, 0, np.zeros((0, 3)), np.zeros((0, 16))).shape == (0,)


def test_arrival_times_match_the_numpy_definition():
    from cdc.diffc import rcc

    for k, first, n in ((8, 0, 5), (3, 11, 40), (12, 2, 1)):
        got = cs.log_arrivals(rcc.arrival_key(77), k, first, n)
        ref = rcc._arrivals(77, k, first, n)
        assert got.shape == ref.shape == (n, 1 << k)
        assert np.allclose(got, ref, rtol=1e-13, atol=1e-13)
        assert np.all(np.diff(got, axis=1) > 0)  # increasing: cumulative sums


def test_safe_after_fork_and_from_threads():
    """A forked child (an archive worker forked after its parent encoded) and concurrent
    threads may run the search: numba's OpenMP layer would kill such a child."""
    import subprocess
    import sys

    code = """
import os, threading, numpy as np
from cdc.diffc import candidate_search as cs
t, s = np.ones((300, 5)), np.zeros((300, 256))
ref = cs.best_indices((1, 2), 8, 0, t, s)
pid = os.fork()
if pid == 0:
    os._exit(0 if np.array_equal(cs.best_indices((1, 2), 8, 0, t, s), ref) else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
out = []
ths = [threading.Thread(target=lambda: out.append(cs.best_indices((1, 2), 8, 0, t, s)))
       for _ in range(4)]
[th.start() for th in ths]; [th.join() for th in ths]
assert len(out) == 4 and all(np.array_equal(o, ref) for o in out)
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
