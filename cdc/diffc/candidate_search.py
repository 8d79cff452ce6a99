"""The DiffC encoder's scheme-1 candidate search, fused into one compiled pass.

Ordered random coding picks, per chunk, ``argmax_i ε_i·δ − log S_i`` over its 2^k
candidates. With NumPy that means writing every candidate normal to memory, reading it
back for the dot product, and nine array passes of the table transform in between: about
1.05·10⁹ normals for one Kodak image, most of the encoder's time. This kernel computes the
Philox words (:mod:`cdc.diffc.philox`'s definition: Philox4x64-10 with a 128-bit product),
the normals (the same table transform, the same float32 rounding) and the dot product
for each candidate in registers and keeps only its score: no candidate is stored, runs of
candidates are scored in parallel (numba ``prange``), and each sum runs in one fixed order,
so the choice depends on neither the thread count nor how chunks are batched.

Only the encoder uses it, for the choice. The selected ε is then rebuilt with
:func:`cdc.diffc.philox.chosen` — the decoder's own NumPy code — so what the encoder
conditions on is, by construction, what every decoder computes.
"""

from __future__ import annotations

import threading

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from cdc.diffc import philox

# Numba's OpenMP layer kills a forked child that launches a kernel ("fork() called from a
# process already using GNU OpenMP"): an archive worker forked after its parent encoded would
# die. The workqueue layer is fork-safe but not thread-safe, so kernels launch under a lock.
# (Process-wide, and only if nothing in the process has chosen a layer already.)
if nb.config.THREADING_LAYER == "default":
    nb.config.THREADING_LAYER = "workqueue"
_LAUNCH = threading.Lock()

_M0, _M1 = np.uint64(0xD2E7470EE14C6C93), np.uint64(0xCA5A826395121157)
_W0, _W1 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBB67AE8584CAA73B)
_LOW32 = np.uint64(0xFFFFFFFF)


@intrinsic
def _mulhilo(typingctx, a, b):  # noqa: ARG001 (numba's signature)
    """(high, low) 64-bit halves of the 128-bit product of two uint64 (one x86 ``mul``)."""
    sig = types.UniTuple(types.uint64, 2)(types.uint64, types.uint64)

    def codegen(context, builder, sig, args):
        i128, i64 = ir.IntType(128), ir.IntType(64)
        p = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        hi = builder.trunc(builder.lshr(p, ir.Constant(i128, 64)), i64)
        return context.make_tuple(builder, sig.return_type, [hi, builder.trunc(p, i64)])

    return sig, codegen


@nb.njit(inline="always", cache=True)
def _philox_block(counter, k0, k1, out):
    """Philox4x64-10 of the counter (counter, 0, 0, 0) under key (k0, k1) into ``out``."""
    c0, c1, c2, c3 = counter, np.uint64(0), np.uint64(0), np.uint64(0)
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + _W0
        k1 = k1 + _W1
    out[0], out[1], out[2], out[3] = c0, c1, c2, c3


@nb.njit(inline="always", cache=True)
def _normal(u, ab, a2, b2, a3):
    """:func:`cdc.diffc.philox.normals_from_words` for one uint32 half, bit for bit
    (``ab``: the level-1 tables A and B interleaved, one cache line for both)."""
    h = u >> np.uint32(17)
    if h == 0 or h == 32767:  # the two outer level-1 cells: levels 2 and 3
        mask = np.uint32(131071)
        f = (u if h != 0 else mask - u) & mask
        h2, f2 = f >> np.uint32(5), f & np.uint32(31)
        t = a3[f2] if h2 == 4095 else a2[h2] + np.float32(f2) * b2[h2]
        return t if h != 0 else -t
    return ab[h, 0] + np.float32(u & np.uint32(131071)) * ab[h, 1]


_TABLES: tuple[np.ndarray, ...] | None = None


def _tables() -> tuple[np.ndarray, ...]:
    """(AB, A2, B2, A3): philox's tables with level 1 interleaved."""
    global _TABLES
    if _TABLES is None:
        a1, b1, a2, b2, a3 = philox.tables()
        _TABLES = (np.ascontiguousarray(np.stack([a1, b1], 1)), a2, b2, a3)
    return _TABLES


_GROUP = 16  # candidates a parallel work item scores in sequence (its words are contiguous)


@nb.njit(parallel=True, cache=True)
def _scores(k0, k1, k, d, first_chunk, target, log_s, ab, a2, b2, a3, out):
    """out[c, i] = ε_i·δ_c − log S_ci for every candidate of every chunk (work items are
    runs of ``_GROUP`` candidates, so a step of one huge chunk uses every thread too)."""
    n_chunks = target.shape[0]
    n = 1 << k
    group = min(n, _GROUP)
    per = n // group
    nw = (d + 1) // 2  # words per candidate (two normals each)
    for item in nb.prange(n_chunks * per):
        c, i0 = item // per, (item % per) * group
        tc = target[c]
        x = np.empty(4, np.uint64)
        w = ((first_chunk + c) * n + i0) * nw  # the run's first word; candidates follow
        _philox_block(np.uint64((w >> 2) + 1), k0, k1, x)
        for i in range(i0, i0 + group):
            acc = 0.0
            for j in range(nw):
                r = w & 3
                if r == 0:
                    _philox_block(np.uint64((w >> 2) + 1), k0, k1, x)
                v = x[r]
                w += 1
                acc += np.float64(_normal(np.uint32(v & _LOW32), ab, a2, b2, a3)) * tc[2 * j]
                if 2 * j + 1 < d:
                    acc += np.float64(_normal(np.uint32(v >> np.uint64(32)), ab, a2, b2, a3)) \
                        * tc[2 * j + 1]
            out[c, i] = acc - log_s[c, i]


@nb.njit(parallel=True, cache=True)
def _log_arrivals(k0, k1, k, first_chunk, out):
    """out[c, i] = log S_i of chunk first_chunk + c: S the cumulative sums of unit
    exponentials −log u, u from word ``(first_chunk + c)·2^k + i`` of the arrival stream."""
    n = 1 << k
    for c in nb.prange(out.shape[0]):
        x = np.empty(4, np.uint64)
        w = (first_chunk + c) * n
        _philox_block(np.uint64(w // 4 + 1), k0, k1, x)
        total = 0.0
        for i in range(n):
            if w % 4 == 0:
                _philox_block(np.uint64(w // 4 + 1), k0, k1, x)
            u = (np.float64(x[w % 4] >> np.uint64(11)) + 0.5) * 1.1102230246251565e-16  # 2^-53
            w += 1
            total += -np.log(u)
            out[c, i] = np.log(total)


def log_arrivals(key: tuple[int, int], k: int, first_chunk: int, n_chunks: int) -> np.ndarray:
    """log S_i (n_chunks, 2^k) float64: the Poisson arrival times ordered random coding
    subtracts, from the Philox words of ``key`` (equal to ``rcc._arrivals`` up to the last
    bits of ``log``: only the encoder's choice reads them)."""
    out = np.empty((n_chunks, 1 << k), np.float64)
    if n_chunks:
        with _LAUNCH:
            _log_arrivals(np.uint64(key[0]), np.uint64(key[1]), k, first_chunk, out)
    return out


def best_indices(key: tuple[int, int], k: int, first_chunk: int, target: np.ndarray,
                 log_s: np.ndarray) -> np.ndarray:
    """The ordered-random-coding choice of chunks ``first_chunk ..`` (n_chunks,) int64.

    ``target``: (n_chunks, d) the normalised target δ of each chunk's dimensions;
    ``log_s``: (n_chunks, 2^k) the log arrival times. Candidate i of chunk c is
    :func:`cdc.diffc.philox.candidate` ``(key, k, d, first_chunk + c, i)``.
    """
    target = np.ascontiguousarray(target, dtype=np.float64)
    log_s = np.ascontiguousarray(log_s, dtype=np.float64)
    n_chunks, d = target.shape
    if log_s.shape != (n_chunks, 1 << k) or d < 1:
        raise ValueError("target must be (n_chunks, d ≥ 1) and log_s (n_chunks, 2^k)")
    if not n_chunks:
        return np.zeros(0, np.int64)
    scores = np.empty_like(log_s)
    with _LAUNCH:
        _scores(np.uint64(key[0]), np.uint64(key[1]), k, d, first_chunk, target, log_s,
                *_tables(), scores)
    return scores.argmax(1)  # the first of equal scores, as a sequential scan keeps


__all__ = ["best_indices", "log_arrivals"]
