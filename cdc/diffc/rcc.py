"""Reverse-channel coding of one diagonal-Gaussian step by ordered random coding.

DiffC's encoder must let the decoder draw a sample of q = N(μ_q, σ²I) while both
only share p = N(μ_p, σ²I) and a seed. In the normalised coordinates
ε = (x − μ_p)/σ the prior is N(0, I) and the target N(δ, I) with
δ = (μ_q − μ_p)/σ, so for a candidate ε_i ~ N(0, I)

    log q(ε_i)/p(ε_i) = ε_i·δ − |δ|²/2,   KL(q‖p) = |δ|²/2 nats.

The dimensions are split into ``n_chunks`` chunks by a random permutation drawn
from the shared seed (dimension p of the permutation goes to chunk p mod n_chunks,
so chunk sizes differ by at most one and each chunk gets ≈ KL/n_chunks). For each
chunk the encoder draws 2^k candidates from a seeded CPU generator and selects by
ordered random coding (Theis & Yosri 2022), i.e. the Poisson functional
representation truncated to 2^k candidates: i* = argmax_i log w_i − log S_i with
S_1 < S_2 < … the arrival times of a unit-rate Poisson process.

Two candidate schemes (the plan's first byte, :mod:`cdc.diffc.stream`):

* ``LAYOUT_PHILOX`` (1): candidate i of chunk c is addressable (:mod:`cdc.diffc.philox`):
  the encoder scores all 2^k candidates of every chunk in one compiled pass that stores
  none of them (:mod:`cdc.diffc.candidate_search`), the decoder computes only candidate i*
  of each chunk — O(d) per chunk instead of O(2^k·d).
* ``LAYOUT_STRIDED`` (0, streams of models whose config predates scheme 1): candidates from
  a seeded torch CPU generator in fixed blocks (a function of the layout only); the decoder
  regenerates every candidate of every chunk and keeps number i*.

Either way encoder and decoder draw exactly the same numbers on any machine; selection
runs on any device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cdc.diffc import philox
from cdc.diffc.stream import (
    CODING_FIXED,
    CODING_ZIPF,
    LAYOUT_PHILOX,
    LAYOUT_STRIDED,
    MAX_ZIPF_BITS,
    packed_size,
)

BLOCK_ELEMENTS = 1 << 22  # candidate floats generated per randn call (16 MiB)
_BLOCK_ELEMENTS = BLOCK_ELEMENTS
_MASK63 = (1 << 63) - 1

#: Candidate normals drawn by :func:`decode` since the process started (the work a stream
#: makes a decoder do; tests read it).
DECODE_DRAWS = {"normals": 0}


def candidate_key(seed: int) -> tuple[int, int]:
    """The Philox key of a step's candidates (scheme 1)."""
    return derive_seed(seed, 5), derive_seed(seed, 6)


def arrival_key(seed: int) -> tuple[int, int]:
    """The Philox key of a step's Poisson arrival times (scheme 1; the encoder's only)."""
    return derive_seed(seed, 7), derive_seed(seed, 8)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= (int(p) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK63


def chunk_index(n_dims: int, n_chunks: int, seed: int) -> Tensor:
    """(n_chunks, d) indices into the n_dims coded dimensions; −1 marks padding."""
    if not 1 <= n_chunks <= n_dims:
        raise ValueError(f"n_chunks must be in 1..{n_dims}, got {n_chunks}")
    perm = torch.randperm(n_dims, generator=torch.Generator().manual_seed(seed))
    d = -(-n_dims // n_chunks)
    idx = torch.full((d * n_chunks,), -1, dtype=torch.long)
    idx[:n_dims] = perm
    return idx.view(d, n_chunks).t().contiguous()


def _blocks(n_chunks: int, k: int, d: int):
    rows = max(1, _BLOCK_ELEMENTS // ((1 << k) * d))
    for start in range(0, n_chunks, rows):
        yield start, min(n_chunks, start + rows)


def choose_layout(kl_bits: float, n_dims: int, chunk_kl_bits: float, k: int,
                  max_k: int = 12, min_bits: float = 0.25) -> tuple[int, int]:
    """(n_chunks, k) for a step of total KL ``kl_bits``: chunks of ≈ ``chunk_kl_bits``.

    A step whose KL is below ``min_bits`` is not coded (0 chunks: the decoder samples
    the model's p from the shared seed). When there are fewer dimensions than chunks
    wanted, k grows (up to ``max_k``) to keep 2 bits of head-room over each chunk's KL.
    """
    if kl_bits < min_bits or n_dims == 0:
        return 0, k
    n = min(n_dims, max(1, math.ceil(kl_bits / chunk_kl_bits)))
    per = kl_bits / n
    if per + 2 > k:
        k = max(k, min(max_k, math.ceil(per + 2)))
    return n, k


def _arrivals(seed: int, k: int, first: int, rows: int) -> np.ndarray:
    """log S_i of chunks first..first+rows−1 (rows, 2^k): cumulative unit exponentials (the
    NumPy definition; the encoder uses :func:`cdc.diffc.candidate_search.log_arrivals`)."""
    n = 1 << k
    w = philox.words(arrival_key(seed), first * n, rows * n)
    u = ((w >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return np.log(np.cumsum(-np.log(u).reshape(rows, n), axis=1))


@torch.no_grad()
def encode(delta: Tensor, n_chunks: int, k: int, seed: int,
           device: torch.device | str | None = None,
           layout: int = LAYOUT_STRIDED) -> tuple[Tensor, Tensor]:
    """Select one candidate per chunk for target N(δ, I) against N(0, I).

    ``delta``: (n_dims,) float. Returns (indices (n_chunks,) int64, the selected
    ε (n_dims,) float32 on the CPU, exactly what :func:`decode` rebuilds).
    ``layout``: the candidate scheme (``stream.LAYOUT_*``).
    """
    delta = delta.detach().float().cpu().reshape(-1)
    n_dims = delta.numel()
    idx = chunk_index(n_dims, n_chunks, derive_seed(seed, 1))
    d = idx.shape[1]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    padded = torch.cat([delta, delta.new_zeros(1)])  # index −1 → 0 (padding has no target)
    target = padded[idx]  # (n_chunks, d)
    n_cand = 1 << k
    chosen = torch.empty(n_chunks, dtype=torch.long)
    eps = torch.zeros(n_dims + 1)
    if layout == LAYOUT_PHILOX:  # the choice by the fused kernel; ε by the decoder's code
        from cdc.diffc import candidate_search  # numba: the encoder's only (decoders skip it)

        key, target_np = candidate_key(seed), target.double().numpy()
        rows = max(1, _BLOCK_ELEMENTS // (1 << k))  # bounds the arrival times held at once
        for a in range(0, n_chunks, rows):
            b = min(n_chunks, a + rows)
            chosen[a:b] = torch.from_numpy(candidate_search.best_indices(
                key, k, a, target_np[a:b],
                candidate_search.log_arrivals(arrival_key(seed), k, a, b - a)))
        eps[idx.reshape(-1)] = torch.from_numpy(philox.chosen(key, k, d, chosen.numpy())
                                                ).reshape(-1)
        return chosen, eps[:n_dims].clone()
    if layout != LAYOUT_STRIDED:
        raise ValueError(f"unknown candidate scheme {layout}")
    gen = torch.Generator().manual_seed(derive_seed(seed, 2))
    times_gen = torch.Generator().manual_seed(derive_seed(seed, 3))
    for a, b in _blocks(n_chunks, k, d):
        cand = torch.randn((b - a, n_cand, d), generator=gen)
        arrivals = torch.empty((b - a, n_cand)).exponential_(generator=times_gen).cumsum(1)
        c = cand.to(dev)
        score = torch.einsum("cnd,cd->cn", c, target[a:b].to(dev)) - arrivals.to(dev).log()
        best = score.argmax(1).cpu()
        chosen[a:b] = best
        sel = cand[torch.arange(b - a), best]  # (rows, d)
        eps[idx[a:b].reshape(-1)] = sel.reshape(-1)
    return chosen, eps[:n_dims].clone()


@torch.no_grad()
def decode(indices: Tensor, n_dims: int, n_chunks: int, k: int, seed: int,
           layout: int = LAYOUT_STRIDED) -> Tensor:
    """The ε (n_dims,) that :func:`encode` selected, from its indices and the seed.

    Scheme 1 (``LAYOUT_PHILOX``) computes the chosen candidate of each chunk only
    (n_chunks · d normals); scheme 0 regenerates all 2^k candidates of every chunk.
    """
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if indices.numel() != n_chunks:
        raise ValueError(f"{indices.numel()} indices for {n_chunks} chunks")
    if n_chunks and (int(indices.max()) >= 1 << k or int(indices.min()) < 0):
        raise ValueError("chunk index out of range")
    idx = chunk_index(n_dims, n_chunks, derive_seed(seed, 1))
    d = idx.shape[1]
    eps = torch.zeros(n_dims + 1)
    if layout == LAYOUT_PHILOX:
        sel = philox.chosen(candidate_key(seed), k, d, indices.numpy())
        DECODE_DRAWS["normals"] += n_chunks * philox.padded_dims(d)
        eps[idx.reshape(-1)] = torch.from_numpy(sel).reshape(-1)
        return eps[:n_dims].clone()
    if layout != LAYOUT_STRIDED:
        raise ValueError(f"unknown candidate scheme {layout}")
    gen = torch.Generator().manual_seed(derive_seed(seed, 2))
    for a, b in _blocks(n_chunks, k, d):
        cand = torch.randn((b - a, 1 << k, d), generator=gen)
        DECODE_DRAWS["normals"] += cand.numel()
        sel = cand[torch.arange(b - a), indices[a:b]]
        eps[idx[a:b].reshape(-1)] = sel.reshape(-1)
    return eps[:n_dims].clone()


def prior_noise(n_dims: int, seed: int) -> Tensor:
    """ε for an uncoded step (0 chunks): a sample of the prior from the shared seed."""
    return torch.randn(n_dims, generator=torch.Generator().manual_seed(derive_seed(seed, 4)))


def pack_indices(indices: Tensor, k: int) -> bytes:
    """Fixed-width k-bit indices, little-endian bit order, padded to a whole byte."""
    v = np.asarray(indices, dtype=np.int64).reshape(-1)
    if v.size == 0:
        return b""
    bits = ((v[:, None] >> np.arange(k)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(bits, bitorder="little").tobytes()


def unpack_indices(data: bytes, n: int, k: int) -> Tensor:
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: n * k]
    vals = (bits.reshape(n, k).astype(np.int64) << np.arange(k)).sum(1)
    return torch.from_numpy(vals)


# -- entropy coding of the indices ------------------------------------------------------------
# The index coding schemes (one byte in the stream's plan) are defined with the stream
# format, in cdc.diffc.stream (which imports no torch): CODING_FIXED (k bits per index),
# CODING_ZIPF (rANS with the static law P(i) ∝ 1/(i+1), i < 2^k, k <= MAX_ZIPF_BITS).
_CDFS: dict[int, list[int]] = {}


def zipf_cdf(k: int) -> list[int]:
    """Quantized CDF (CompressAI layout: 2^k symbols + an escape) of P(i) ∝ 1/(i+1).

    Ordered random coding picks early candidates more often; for chunks whose KL
    is a few bits below k, the selected index follows this law closely (P(0) ≈ 1/H_{2^k}).
    """
    if k not in _CDFS:
        from cdc.compressai_ext import extension  # no CompressAI package init (3-4 s)

        pmf_to_quantized_cdf = extension("_CXX").pmf_to_quantized_cdf

        w = 1.0 / np.arange(1, (1 << k) + 1, dtype=np.float64)
        pmf = (w / w.sum() * (1 - 1e-6)).tolist() + [1e-6]
        _CDFS[k] = list(pmf_to_quantized_cdf(pmf, 16))
    return _CDFS[k]


def code_indices(indices: Tensor, k: int, coding: int) -> bytes:
    if coding == CODING_FIXED or len(indices) == 0:
        return pack_indices(indices, k)
    if coding != CODING_ZIPF or k > MAX_ZIPF_BITS:
        raise ValueError(f"index coding {coding} does not support k={k}")
    from cdc.compressai_ext import extension

    RansEncoder = extension("ans").RansEncoder  # noqa: N806
    sym = [int(v) for v in np.asarray(indices).reshape(-1)]
    sym += [0] * (2 - len(sym))  # CompressAI's RansEncoder crashes on a one-symbol message
    cdf = zipf_cdf(k)
    return RansEncoder().encode_with_indexes(sym, [0] * len(sym), [cdf], [len(cdf)], [0])


def check_indices(data: bytes, n: int, k: int, coding: int) -> None:
    """Raise (``CorruptStreamError`` / ``ValueError``) unless ``data`` can hold ``n`` indices
    of ``k`` bits coded with ``coding``: what :func:`decode_indices` checks before decoding
    (for rANS blocks, before CompressAI's decoder sees them; see :mod:`cdc.rans`)."""
    if coding == CODING_FIXED or n == 0:
        if len(data) != packed_size(n, k):
            raise ValueError("fixed-width index block has the wrong length")
        return
    if coding != CODING_ZIPF or k > MAX_ZIPF_BITS:
        raise ValueError(f"index coding {coding} does not support k={k}")
    from cdc.rans import check_string, min_bits_from_cdf

    m = max(n, 2)
    check_string(data, m, m * min_bits_from_cdf(zipf_cdf(k)), f"{n} zipf-coded {k}-bit indices")


def decode_indices(data: bytes, n: int, k: int, coding: int) -> Tensor:
    check_indices(data, n, k, coding)
    if coding == CODING_FIXED or n == 0:
        return unpack_indices(data, n, k)
    from cdc.compressai_ext import extension
    from cdc.rans import padded

    RansDecoder = extension("ans").RansDecoder  # noqa: N806

    cdf = zipf_cdf(k)
    m = max(n, 2)
    out = RansDecoder().decode_with_indexes(padded(data, m), [0] * m, [cdf], [len(cdf)], [0])
    return torch.tensor(out[:n], dtype=torch.long)
