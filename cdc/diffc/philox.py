"""Addressable Gaussian candidates: counter-based Philox words, a table normal transform.

DiffC's scheme-1 streams (``stream.SCHEME_COUNTER``) draw candidate ``i`` of chunk ``c``
at a position computed from (key, c, i), so a decoder computes only the candidate the
stream names (O(d) per chunk) while the encoder may draw all 2^k of a block of chunks in
one call; both get the same bits on any machine, thread count or batch layout:

* **Words.** Word ``w`` of a stream is element ``w mod 4`` of Philox4x64-10 (Salmon et al.
  2011, Random123's constants) of the 256-bit counter ``w // 4 + 1`` under the 128-bit
  ``key``. NumPy's ``numpy.random.Philox`` (a C implementation whose raw stream NumPy keeps
  stable) computes them; :func:`philox4x64_reference` is a pure-Python copy that the tests
  check it against (and against Random123's known-answer vectors).
* **Normals.** Each 64-bit word gives two normals, its low 32 bits first. A 32-bit ``u``
  maps through a piecewise-linear inverse normal CDF: its top 15 bits pick one of 2^15
  cells of equal probability, its low 17 bits interpolate inside the cell,
  ``z = A[h] + f·B[h]`` in float32 (one rounded multiply, one rounded add: the same result
  from every IEEE-754 machine and every vector width). The two outermost cells (probability
  2^-15 each) are refined by a second table of 2^12 cells (interpolated by the remaining
  5 bits) and a third of 32 points, so |z| reaches 6.1 (the 2^-32 quantile). Tables are
  computed once from ``statistics.NormalDist.inv_cdf`` and rounded to a 2^-24 grid; their
  SHA-256 is checked at first use, so a platform whose libm would give other tables fails
  loudly instead of decoding differently.
* **Layout.** Candidate ``i`` of chunk ``c`` (``d`` dimensions) is normals
  ``[s, s + d)`` with ``s = (c·2^k + i)·D``, ``D`` = d rounded up to even (whole words),
  so the 2^k candidates of chunks ``a..b−1`` are one contiguous run.

Everything is integer arithmetic and IEEE-754 basic operations on NumPy arrays: no
transcendental function, no fused multiply-add, no thread-dependent reduction.
"""

from __future__ import annotations

import hashlib
import statistics
from typing import Any

import numpy as np

_M0, _M1 = 0xD2E7470EE14C6C93, 0xCA5A826395121157
_W0, _W1 = 0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B
_U64 = (1 << 64) - 1

#: Candidates occupy a whole number of 64-bit words (two normals each).
BLOCK_NORMALS = 2
_H1, _F1 = 15, 17  # level 1: 2^15 cells, 17 interpolation bits
_H2, _F2 = 12, 5  # level 2 (inside an outer level-1 cell): 2^12 cells, 5 bits
_N3 = 1 << _F2  # level 3 (inside the outermost level-2 cell): 32 points
_GRID = float(1 << 24)
#: SHA-256 of the tables (A1, B1, A2, B2, A3 as float32, little-endian): any platform
#: that computes other tables would draw other candidates; it refuses instead.
TABLES_SHA256 = "a3f1a66b7e1108e4d9405735417c6a4d1ec895b7c809e56e69dc112ad96468f0"


def philox4x64_reference(counter: tuple[int, int, int, int], key: tuple[int, int]
                         ) -> list[int]:
    """Philox4x64-10 of one 256-bit counter (four 64-bit words): the specification."""
    c, k = list(counter), list(key)
    for _ in range(10):
        p0, p1 = _M0 * c[0], _M1 * c[2]
        c = [(p1 >> 64) ^ c[1] ^ k[0], p1 & _U64, (p0 >> 64) ^ c[3] ^ k[1], p0 & _U64]
        k = [(k[0] + _W0) & _U64, (k[1] + _W1) & _U64]
    return c


def words(key: tuple[int, int], start: int, n: int) -> np.ndarray:
    """Words ``start .. start+n−1`` (uint64) of the stream keyed by ``key`` (two 64-bit
    ints). NumPy's Philox with ``counter=m`` first emits the block of counter m + 1."""
    bg = np.random.Philox(counter=start // 4, key=np.array(key, dtype=np.uint64))
    skip = start % 4
    out = bg.random_raw(skip + n)
    return out[skip:] if skip else out


def _q(p: float) -> float:
    """The normal quantile, rounded to the 2^-24 grid."""
    return round(statistics.NormalDist().inv_cdf(p) * _GRID) / _GRID


def _build_tables() -> tuple[np.ndarray, ...]:
    n1 = 1 << _H1
    edges = [_q(h / n1) if 0 < h < n1 else 0.0 for h in range(n1 + 1)]
    a1 = np.array(edges[:n1], dtype=np.float64)
    b1 = (np.array(edges[1:], dtype=np.float64) - a1) / (1 << _F1)
    a1[0] = a1[-1] = b1[0] = b1[-1] = 0.0  # the outer cells: levels 2 and 3
    # Upper tail: p = 1 − 2^-15 + (h2 + f2/2^5)·2^-27; h2 = 2^12 − 1 is level 3.
    n2, lo, w2 = 1 << _H2, 1.0 - 2.0**-_H1, 2.0 ** -(_H1 + _H2)
    e2 = [_q(lo + h * w2) for h in range(n2 + 1) if h < n2] + [0.0]
    a2 = np.array(e2[:n2], dtype=np.float64)
    b2 = (np.array(e2[1:], dtype=np.float64) - a2) / _N3
    a2[-1] = b2[-1] = 0.0
    lo3, w3 = 1.0 - w2, 2.0 ** -(_H1 + _H2 + _F2)
    a3 = np.array([_q(lo3 + (j + 0.5) * w3) for j in range(_N3)], dtype=np.float64)
    return tuple(t.astype(np.float32) for t in (a1, b1, a2, b2, a3))


_TABLES: tuple[np.ndarray, ...] | None = None


def tables() -> tuple[np.ndarray, ...]:
    global _TABLES
    if _TABLES is None:
        t = _build_tables()
        digest = hashlib.sha256(b"".join(x.astype("<f4").tobytes() for x in t)).hexdigest()
        if digest != TABLES_SHA256:
            raise RuntimeError(
                f"normal tables differ on this platform (sha256 {digest}): DiffC scheme-1 "
                "candidates would not match other machines'")
        _TABLES = t
    return _TABLES


_CHUNK = 1 << 13  # words per pass: every buffer stays in cache (and below mmap's threshold)


def _transform(u: np.ndarray, z: np.ndarray, h: np.ndarray, f: np.ndarray, bh: np.ndarray
               ) -> None:
    """z = normals of the uint32 halves ``u`` (same length; h, f, bh: scratch)."""
    a1, b1, _, _, _ = tables()
    np.right_shift(u, _F1, out=h, casting="unsafe")
    np.take(a1, h, out=z)
    np.take(b1, h, out=bh)
    np.bitwise_and(u, np.uint32((1 << _F1) - 1), out=f)
    np.multiply(bh, f, out=bh, casting="unsafe")  # f < 2^17: exact in float32
    np.add(z, bh, out=z)
    np.subtract(u, np.uint32(1 << _F1), out=f)
    outer = np.flatnonzero(f >= np.uint32((1 << 32) - (2 << _F1)))
    if outer.size:
        z[outer] = _outer(u[outer])


def _outer(v: np.ndarray) -> np.ndarray:
    """The two outermost level-1 cells (|z| > 3.8): levels 2 and 3."""
    _, _, a2, b2, a3 = tables()
    mask = np.uint32((1 << _F1) - 1)
    upper = (v >> _F1) != 0
    f = np.where(upper, v, mask - v) & mask
    h2, f2 = (f >> _F2).astype(np.intp), (f & np.uint32(_N3 - 1)).astype(np.intp)
    t = a2[h2] + f2.astype(np.float32) * b2[h2]
    t = np.where(h2 == (1 << _H2) - 1, a3[f2], t)
    return np.where(upper, t, -t).astype(np.float32)


def _halves(w: np.ndarray) -> np.ndarray:
    w = np.ascontiguousarray(w, dtype=np.uint64)
    if np.little_endian:
        return w.view(np.uint32)  # low half, high half
    return np.stack([w & 0xFFFFFFFF, w >> 32], -1).astype(np.uint32).reshape(-1)


def normals_from_words(w: np.ndarray) -> np.ndarray:
    """Two float32 normals per uint64 word (low half first)."""
    u = _halves(w)
    z = np.empty(u.size, dtype=np.float32)
    m = min(u.size, 2 * _CHUNK)
    h, f, bh = np.empty(m, np.intp), np.empty(m, np.uint32), np.empty(m, np.float32)
    for s in range(0, u.size, 2 * _CHUNK):
        e = min(u.size, s + 2 * _CHUNK)
        _transform(u[s:e], z[s:e], h[: e - s], f[: e - s], bh[: e - s])
    return z


def normals(key: tuple[int, int], start: int, n: int, out: np.ndarray | None = None
            ) -> np.ndarray:
    """Normals ``start .. start+n−1`` (float32) of the stream keyed by ``key``; ``start``
    and ``n`` are even (a 64-bit word each pair)."""
    if start % 2 or n % 2 or start < 0 or n < 0:
        raise ValueError("normals come in pairs (one 64-bit word each)")
    z = np.empty(n, dtype=np.float32) if out is None else out.reshape(-1)
    if z.size != n or z.dtype != np.float32:
        raise ValueError("out must be a float32 array of n elements")
    bg = np.random.Philox(counter=start // 8, key=np.array(key, dtype=np.uint64))
    skip = (start // 2) % 4
    if skip:
        bg.random_raw(skip)
    m = min(n, 2 * _CHUNK)
    h, f, bh = np.empty(m, np.intp), np.empty(m, np.uint32), np.empty(m, np.float32)
    for s in range(0, n, 2 * _CHUNK):
        e = min(n, s + 2 * _CHUNK)
        _transform(_halves(bg.random_raw((e - s) // 2)), z[s:e], h[: e - s], f[: e - s],
                   bh[: e - s])
    return z


def padded_dims(d: int) -> int:
    """Normals one candidate of ``d`` dimensions occupies (a whole number of blocks)."""
    return -(-d // BLOCK_NORMALS) * BLOCK_NORMALS


def candidates(key: tuple[int, int], k: int, d: int, first_chunk: int, n_chunks: int,
               out: np.ndarray | None = None, workers: int = 1) -> np.ndarray:
    """All 2^k candidates of chunks ``first_chunk .. +n_chunks−1``: (n_chunks, 2^k, d), a
    view of (n_chunks, 2^k, :func:`padded_dims`) normals (``out``, if given, is filled).
    ``workers`` > 1 splits the chunks among threads (NumPy releases the GIL): the same
    numbers, each at its own position."""
    dd = padded_dims(d)
    full = np.empty((n_chunks, 1 << k, dd), np.float32) if out is None else out
    if full.shape != (n_chunks, 1 << k, dd) or full.dtype != np.float32 \
            or not full.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 (n_chunks, 2^k, padded d) array")
    per = -(-n_chunks // max(1, workers))
    parts = [(a, min(n_chunks, a + per)) for a in range(0, n_chunks, per)]

    def fill(part: tuple[int, int]) -> None:
        a, b = part
        normals(key, ((first_chunk + a) << k) * dd, ((b - a) << k) * dd, out=full[a:b])

    if len(parts) > 1:
        list(_pool(len(parts)).map(fill, parts))
    else:
        fill(parts[0])
    return full[..., :d]


_POOLS: dict[int, Any] = {}


def _pool(n: int) -> Any:
    if n not in _POOLS:
        from concurrent.futures import ThreadPoolExecutor

        _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="philox")
    return _POOLS[n]


def candidate(key: tuple[int, int], k: int, d: int, chunk: int, index: int) -> np.ndarray:
    """Candidate ``index`` of chunk ``chunk`` alone: (d,), the same numbers
    :func:`candidates` puts at ``[chunk − first_chunk, index]``."""
    dd = padded_dims(d)
    return normals(key, ((chunk << k) + index) * dd, dd)[:d]


def _mulhilo(a: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 64-bit halves of a·m for uint64 ``a`` and a 64-bit constant ``m``."""
    m32 = np.uint64(0xFFFFFFFF)
    mh, ml = np.uint64(m >> 32), np.uint64(m & 0xFFFFFFFF)
    ah, al = a >> np.uint64(32), a & m32
    ll, lh, hl, hh = al * ml, al * mh, ah * ml, ah * mh
    mid = (ll >> np.uint64(32)) + (lh & m32) + (hl & m32)  # < 3·2^32: no overflow
    hi = hh + (lh >> np.uint64(32)) + (hl >> np.uint64(32)) + (mid >> np.uint64(32))
    return hi, a * np.uint64(m)


def philox_blocks(key: tuple[int, int], counters: np.ndarray) -> np.ndarray:
    """Philox4x64-10 of many counters whose three high words are 0: (n, 4) uint64. The
    vectorised twin of :func:`philox4x64_reference` (the decoder's, for scattered blocks)."""
    c0 = np.ascontiguousarray(counters, dtype=np.uint64).reshape(-1)
    z = np.zeros_like(c0)
    c1, c2, c3 = z, z, z
    k0, k1 = key[0] & _U64, key[1] & _U64
    with np.errstate(over="ignore"):
        for _ in range(10):
            hi0, lo0 = _mulhilo(c0, _M0)
            hi1, lo1 = _mulhilo(c2, _M1)
            c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
            k0, k1 = (k0 + _W0) & _U64, (k1 + _W1) & _U64
    return np.stack([c0, c1, c2, c3], 1)


def chosen(key: tuple[int, int], k: int, d: int, indices: np.ndarray) -> np.ndarray:
    """Candidate ``indices[c]`` of every chunk c: (n_chunks, d), the numbers
    :func:`candidates` draws for them, at O(n_chunks · d) work (no other candidate is
    computed): the Philox blocks their words fall in, all chunks at once."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = idx.size
    if n == 0:
        return np.zeros((0, d), dtype=np.float32)
    if int(idx.min()) < 0 or int(idx.max()) >= 1 << k:
        raise ValueError("candidate index out of range")
    nw = padded_dims(d) // 2  # words per candidate
    w0 = ((np.arange(n, dtype=np.int64) << k) + idx) * nw  # first word of each
    per = (nw + 3) // 4 + 1  # blocks that can hold nw words from any offset
    counters = (w0[:, None] // 4 + np.arange(per, dtype=np.int64)).reshape(-1) + 1
    w = philox_blocks(key, counters.astype(np.uint64)).reshape(n, 4 * per)
    w = np.take_along_axis(w, (w0 % 4)[:, None] + np.arange(nw), axis=1)
    return normals_from_words(w.reshape(-1)).reshape(n, 2 * nw)[:, :d]


__all__ = ["BLOCK_NORMALS", "TABLES_SHA256", "candidate", "candidates", "chosen", "normals",
           "normals_from_words", "padded_dims", "philox4x64_reference", "philox_blocks",
           "tables", "words"]
