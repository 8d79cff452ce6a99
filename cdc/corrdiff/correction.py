"""CorrDiff's correction: which DDIM steps, how the weights are searched, how they are coded.

At a corrected DDIM step the diffusion model's clipped x0 estimate is replaced by

    x0' = (1 − w)·x0_diffusion + w·x0_e2e,        w ∈ table (default 8 values → 3 bits)

and ε is re-derived from x0' (as the sampler already does after clipping), so the
rest of the trajectory follows the corrected estimate. The encoder, which sees the
original x, runs the *same* sampling loop as the decoder and at each corrected step
picks, per image, the table index whose x0' has the lowest MSE to x over the
image's own (unpadded) pixels (greedy, step by step; ties → the lower index). The
decoder reads the indices from the stream and runs the identical loop, so both ends
follow the same path: same start noise (seed), same ŷ, same weights, same ops.

Which steps: the last ``correct_last`` DDIM steps of the path, leaving out the final
one when ``skip_final`` (the final step runs at n = 0, where x_t already is the
image, so correcting it would just blend the output). The encoder's choice is stored
in the stream (first step and count), so the decoder needs no rule.

Section ``W`` (one or more decode paths; ``v`` = LEB128 varint)::

    1 byte   W format version (1)
    v        P: number of paths (≥ 1)
    P ×      v steps · v round(100·γ) · v zigzag(seed) · v first · v count
             · ceil(count·bits / 8) bytes of indices, ``bits`` each, LSB first
    4 bytes  CRC32 of the bytes above (little-endian)

Any inconsistency (CRC, truncation, trailing bytes, count past the path's steps,
non-zero padding bits, an index outside the table) raises ``CorruptStreamError``
naming section 'W'.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from cdc.bitstream import read_varint, write_varint
from cdc.diffusion import DDIMSampler
from cdc.errors import CorruptStreamError
from cdc.model_config import config_from_dict, config_to_dict

W_TAG = "W"
W_VERSION = 1
GAMMA_SCALE = 100  # γ is stored (and used at both ends) in steps of 0.01

#: Default weight table: 8 values → 3 bits per corrected step.
DEFAULT_TABLE = (0.0, 1 / 7, 2 / 7, 3 / 7, 4 / 7, 5 / 7, 6 / 7, 1.0)


CRITERIA = ("space", "pixels")


@dataclass(frozen=True)
class CorrectionConfig:
    """The weight table and the encoder's step rule (stored in the weights file)."""

    table: tuple[float, ...] = DEFAULT_TABLE
    correct_last: int = 2  # correct the last K DDIM steps ...
    skip_final: bool = True  # ... except the final one (n = 0)
    # What the encoder's choice minimises: MSE in the codec's space ("space": pixels, or the
    # encoder's latent of the image) or, on a latent space, MSE of the frozen decoder's
    # pixels to the original ("pixels": one decode per table entry and corrected step).
    criterion: str = "space"

    def __post_init__(self) -> None:
        n = len(self.table)
        if n < 2 or n & (n - 1) or n > 256:
            raise ValueError(f"weight table needs 2, 4, 8, ... 256 entries, got {n}")
        if any(not 0.0 <= w <= 1.0 for w in self.table):
            raise ValueError(f"weights must lie in [0, 1]: {self.table}")
        if self.correct_last < 0:
            raise ValueError("correct_last must be >= 0")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, "
                             f"got {self.criterion!r}")

    @property
    def bits(self) -> int:
        return int(math.log2(len(self.table)))

    def steps_to_correct(self, steps: int) -> tuple[int, int]:
        """(first, count): the DDIM step indices first .. first+count-1 get corrected."""
        end = steps - 1 if self.skip_final and steps > 1 else steps
        first = max(0, end - self.correct_last)
        return first, end - first

    def to_dict(self) -> dict[str, Any]:
        return {**config_to_dict(self), "table": [float(w) for w in self.table]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CorrectionConfig:
        if "table" in d:
            d = {**d, "table": [float(w) for w in d["table"]]}
        return config_from_dict(cls, d, "correction config")


@dataclass
class PathRecord:
    """One decode path the encoder simulated, with its chosen weight indices."""

    steps: int
    gamma: float  # a multiple of 0.01
    seed: int
    first: int
    indices: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.indices)

    def matches(self, steps: int, gamma: float, seed: int) -> bool:
        """Whether a decode request follows this path (seed is irrelevant when γ = 0)."""
        return (steps == self.steps and quantize_gamma(gamma) == self.gamma
                and (self.gamma == 0 or seed == self.seed))


def quantize_gamma(gamma: float) -> float:
    if not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    return round(gamma * GAMMA_SCALE) / GAMMA_SCALE


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(u: int) -> int:
    return u // 2 if u % 2 == 0 else -(u + 1) // 2


def pack_indices(indices: Sequence[int], bits: int) -> bytes:
    acc, nacc = 0, 0
    out = bytearray()
    for idx in indices:
        if not 0 <= idx < (1 << bits):
            raise ValueError(f"index {idx} does not fit in {bits} bits")
        acc |= int(idx) << nacc
        nacc += bits
        while nacc >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nacc -= 8
    if nacc:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack_indices(data: bytes, count: int, bits: int) -> list[int]:
    acc = int.from_bytes(data, "little")
    mask = (1 << bits) - 1
    out = [(acc >> (k * bits)) & mask for k in range(count)]
    if acc >> (count * bits):
        raise CorruptStreamError("section 'W': non-zero padding bits after the weight indices")
    return out


def pack_w(paths: Sequence[PathRecord], bits: int) -> bytes:
    """Serialize the decode paths (see the module docstring for the layout)."""
    if not paths:
        raise ValueError("at least one decode path")
    out = bytearray([W_VERSION]) + write_varint(len(paths))
    for p in paths:
        if p.first + p.count > p.steps:
            raise ValueError(
                f"corrected steps {p.first}+{p.count} exceed the path's {p.steps} steps")
        out += write_varint(p.steps) + write_varint(round(p.gamma * GAMMA_SCALE))
        out += write_varint(_zigzag(p.seed)) + write_varint(p.first) + write_varint(p.count)
        out += pack_indices(p.indices, bits)
    out += struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out)


def unpack_w(data: bytes, bits: int, max_steps: int) -> list[PathRecord]:
    """Parse and verify section W; every problem is a CorruptStreamError naming it."""
    if len(data) < 1 + 1 + 4:
        raise CorruptStreamError(f"section 'W' (CorrDiff weights) truncated: {len(data)} bytes")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) & 0xFFFFFFFF != crc:
        raise CorruptStreamError("section 'W' (CorrDiff weights) checksum mismatch: corrupted")
    if body[0] != W_VERSION:
        raise CorruptStreamError(f"section 'W': unknown version {body[0]}")
    pos, end = 1, len(body)
    try:
        n_paths, pos = read_varint(body, pos, end)
        if n_paths < 1:
            raise CorruptStreamError("section 'W': no decode path")
        paths = []
        for _ in range(n_paths):
            steps, pos = read_varint(body, pos, end)
            g, pos = read_varint(body, pos, end)
            s, pos = read_varint(body, pos, end)
            first, pos = read_varint(body, pos, end)
            count, pos = read_varint(body, pos, end)
            if not 1 <= steps <= max_steps:
                raise CorruptStreamError(f"section 'W': {steps} steps outside 1..{max_steps}")
            if first + count > steps:
                raise CorruptStreamError(
                    f"section 'W': corrected steps {first}..{first + count - 1} past {steps} steps")
            nbytes = (count * bits + 7) // 8
            if pos + nbytes > end:
                raise CorruptStreamError("section 'W': weight indices truncated")
            idx = unpack_indices(body[pos : pos + nbytes], count, bits)
            pos += nbytes
            paths.append(PathRecord(steps, g / GAMMA_SCALE, _unzigzag(s), first, idx))
    except CorruptStreamError as e:
        if "'W'" in str(e):
            raise
        raise CorruptStreamError(f"section 'W': {e}") from e
    if pos != end:
        raise CorruptStreamError(f"section 'W': {end - pos} trailing bytes")
    return paths


# -- the corrected sampling loop ---------------------------------------------------------------


def blend(x0: Tensor, x0_e2e: Tensor, w: Tensor) -> Tensor:
    """(1 − w)·x0 + w·x0_e2e with per-item w of shape (B,); w = 0 returns x0 exactly."""
    w = w.to(x0.device, torch.float32).view(-1, 1, 1, 1)
    return (1 - w) * x0 + w * x0_e2e


def region_mse(a: Tensor, b: Tensor, sizes: Sequence[tuple[int, int]]) -> Tensor:
    """Per-item MSE over each item's top-left (h, w) region (its unpadded pixels)."""
    return torch.stack([((a[i, :, :h, :w] - b[i, :, :h, :w]) ** 2).mean()
                        for i, (h, w) in enumerate(sizes)])


def choose_weights(x0: Tensor, x0_e2e: Tensor, target: Tensor, table: Tensor,
                   sizes: Sequence[tuple[int, int]]) -> Tensor:
    """Per item, the table index whose blend is closest (MSE) to the target."""
    return choose_by(lambda x: region_mse(x, target, sizes), x0, x0_e2e, table)


def choose_by(distance: Callable[[Tensor], Tensor], x0: Tensor, x0_e2e: Tensor,
              table: Tensor) -> Tensor:
    """Per item, the table index whose blend has the smallest ``distance`` (B,)."""
    b = x0.shape[0]
    errs = torch.stack([distance(blend(x0, x0_e2e, w.expand(b))) for w in table])  # (T, B)
    return errs.argmin(dim=0).cpu()


@torch.no_grad()
def corrected_sample(
    sampler: DDIMSampler,
    denoise: Callable[[Tensor, Tensor], Tensor],
    x_n: Tensor,
    steps: int,
    x0_e2e: Tensor,
    table: Sequence[float],
    first: int,
    count: int,
    indices: Tensor | None = None,
    target: Tensor | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    clip: bool = True,
    distance: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """DDIM (η = 0; x0 clipped when ``clip``, i.e. for pixels) with the x0 estimate blended
    at steps first..first+count-1; everything in the codec's model units.

    Decoder: pass ``indices`` (B, count). Encoder: pass ``target`` (the padded
    original in model units) and ``sizes`` (each item's unpadded (h, w) there), or a
    ``distance`` (candidate x0 → per-item error); the indices are chosen step by step.
    Both run :meth:`DDIMSampler.sample` with the blend as its x0 hook.
    Returns (x0 in [-1, 1], indices (B, count)); with all indices pointing at w = 0
    it returns exactly what the plain sampler returns.
    """
    if first < 0 or first + count > steps:
        raise ValueError(f"corrected steps {first}..{first + count - 1} outside {steps} steps")
    sampler.timesteps(steps)  # validates
    b = x_n.shape[0]
    table_t = torch.tensor([float(w) for w in table], dtype=torch.float32)
    if indices is None:
        if distance is None and (target is None or sizes is None):
            raise ValueError("pass either indices (decoder) or target and sizes or a distance "
                             "(encoder)")
        if distance is None:
            distance = lambda x: region_mse(x, target, sizes)  # noqa: E731
        chosen = torch.zeros((b, count), dtype=torch.long)
    else:
        chosen = torch.as_tensor(indices, dtype=torch.long).reshape(b, count)
        if chosen.numel() and (chosen.min() < 0 or chosen.max() >= len(table)):
            raise ValueError("weight index outside the table")

    def correct(i: int, x0: Tensor) -> Tensor:
        if not first <= i < first + count:
            return x0
        k = i - first
        if indices is None:
            chosen[:, k] = choose_by(distance, x0, x0_e2e, table_t)
        return blend(x0, x0_e2e, table_t[chosen[:, k]])

    return sampler.sample(denoise, x_n, steps, clip=clip, hook=correct), chosen


__all__ = [
    "DEFAULT_TABLE",
    "W_TAG",
    "CorrectionConfig",
    "PathRecord",
    "CRITERIA",
    "blend",
    "choose_by",
    "choose_weights",
    "corrected_sample",
    "pack_w",
    "quantize_gamma",
    "region_mse",
    "unpack_w",
]
