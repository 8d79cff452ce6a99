"""The decode budget: what a decoder may spend on one stream, checked before it spends it.

A stream's header claims an image size; its plan (DiffC) claims steps, chunk counts and
candidate widths. Each of those sets how much a decoder allocates and computes, so a
few crafted bytes could otherwise ask for gigabytes or minutes. Every decoder of the
toolkit therefore works out, from the header alone, what the decode would need and
compares it with a :class:`DecodeBudget` *before* allocating anything; over the budget
it raises :class:`cdc.errors.ResourceLimitError` (a ``BitstreamError``) naming the limit.

The defaults are sized for a 24 GB, 2-core machine: every stream the toolkit's encoders
write from an image within the default input limit of ``cdc compress`` (2**25 pixels)
passes the pixel and symbol limits; the memory and work limits refuse what would not
finish here (a CDC decode on the CPU materialises its attention matrices, so the memory
limit caps cdc-small's near 0.9 megapixels). A caller that trusts its streams and has
the hardware raises them: ``codec.budget = DecodeBudget(max_alloc_bytes=64 << 30)``, the
CLI's ``--decode-budget max_alloc_bytes=64GiB``, or ``DecodeBudget.unlimited()``.

This module imports nothing heavy (no torch): ``cdc info`` and the CLI parse budgets too.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cdc.errors import ResourceLimitError

GiB = 1 << 30


@dataclass(frozen=True)
class DecodeBudget:
    """Upper limits for decoding one stream (all are per image; batches split to fit)."""

    #: Padded pixels of the decoded image (the networks run at the padded size).
    max_pixels: int = 1 << 25
    #: Network evaluations (DDIM steps; for DiffC also the coded steps it replays).
    max_steps: int = 1000
    #: Padded pixels × network evaluations: the decode's compute (1024² at 16 steps, 256²
    #: at 256); one costs 30-70 µs on this 2-core machine, so this is minutes, not hours.
    max_pixel_steps: int = 1 << 24
    #: Entropy-coded symbols (CDC's y and z latents, DiffC's chunk indices).
    max_latent_elements: int = 1 << 26
    #: Estimated peak memory of the decode (the largest network evaluation).
    max_alloc_bytes: int = 12 * GiB
    #: DiffC: Gaussian candidates the reverse-channel decoder draws (its CPU time; ~6 ns
    #: each here).
    max_rcc_draws: int = 1 << 33
    #: DiffC: the same per coded dimension, i.e. the sum of 2^k over the steps (the
    #: shipped encoder writes k = 8, up to 12 on one-dimension chunks: ~6,000 for 20 steps;
    #: k = 16 on 20 steps would be 1.3 million).
    max_rcc_draws_per_dim: int = 1 << 17

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DecodeBudget.{f.name} must be a positive int, got {v!r}")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def unlimited(cls) -> DecodeBudget:
        """No limits worth the name (for trusted streams on big machines)."""
        return cls(**{f.name: 1 << 62 for f in dataclasses.fields(cls)})

    def replace(self, **changes: Any) -> DecodeBudget:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: DecodeBudget | None = None) -> DecodeBudget:
        """``base`` (default: the defaults) with the fields in ``d`` changed; a field may be
        given without its ``max_`` prefix, a value as an int or a string :func:`parse_size`
        reads."""
        names = {f.name for f in dataclasses.fields(cls)}
        changes = {}
        for k, v in d.items():
            name = k if k in names else f"max_{k}"
            if name not in names:
                raise ValueError(f"unknown decode budget field {k!r}; known: "
                                 + ", ".join(sorted(n.removeprefix("max_") for n in names)))
            changes[name] = parse_size(v) if isinstance(v, str) else v
        return dataclasses.replace(base or cls(), **changes)

    @classmethod
    def parse(cls, text: str, base: DecodeBudget | None = None) -> DecodeBudget:
        """``"pixels=1e8,alloc_bytes=32GiB"`` (the CLI's ``--decode-budget``)."""
        items = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"decode budget entry {part!r} is not NAME=VALUE")
            items[key.strip()] = value.strip()
        return cls.from_dict(items, base)

    # -- checking ----------------------------------------------------------------------
    def check(self, what: str, **needs: float) -> None:
        """Raise :class:`ResourceLimitError` unless every ``need`` fits its ``max_<need>``.

        ``what`` names the stream or step (it starts the message)."""
        for name, needed in needs.items():
            allowed = getattr(self, f"max_{name}")
            if needed > allowed:
                raise ResourceLimitError(
                    f"{what} needs {_fmt(name, needed)} {_UNITS.get(name, name)}, over the "
                    f"decode budget's {_fmt(name, allowed)} (DecodeBudget.max_{name}; raise it "
                    "only for streams you trust)", f"max_{name}", needed, allowed)


DEFAULT_BUDGET = DecodeBudget()

_UNITS = {"pixels": "pixels", "steps": "network evaluations",
          "pixel_steps": "pixel-evaluations", "latent_elements": "entropy-coded symbols",
          "alloc_bytes": "of memory", "rcc_draws": "candidate draws",
          "rcc_draws_per_dim": "candidate draws per coded dimension"}


def _fmt(name: str, v: float) -> str:
    if name == "alloc_bytes":
        return f"{v / GiB:.1f} GiB" if v >= GiB / 10 else f"{v / (1 << 20):.1f} MiB"
    return f"{int(v):,}" if v < 1e15 else f"{v:.3g}"


_SIZE = re.compile(r"^\s*([0-9.eE+]+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SCALE = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
          "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}


def parse_size(text: str) -> int:
    """``"12GiB"`` → 12·2**30, ``"1e8"`` → 10**8, ``"4M"`` → 4·10**6 (ValueError if not)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a number or size: {text!r}")
    unit = (m.group(2) or "").lower().removesuffix("b")
    try:
        value = float(m.group(1)) * _SCALE[unit]
    except (KeyError, ValueError):
        raise ValueError(f"not a number or size: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite size: {text!r}")
    return int(value)


# -- what a decode needs (estimates from the config and the claimed size) ---------------------
def unet_bytes(h: int, w: int, *, channels: int, mults: Iterable[int],
               context_mults: Iterable[int], res_blocks: int, attention_levels: Iterable[int],
               head_channels: int, in_channels: int = 3, batch: int = 1, elem: int = 4,
               attention_matrices: bool = True) -> int:
    """Peak memory of one forward pass of :class:`cdc.models.unet.ConditionalUNet` on
    (batch, in_channels, h, w): the skip activations it keeps, plus the largest working set
    of one level (concatenated input and the residual block's intermediates), or of one
    self-attention (q, k, v and, where the kernel materialises them as PyTorch's CPU
    kernel does for the U-Net's strided q/k/v, the score and softmax matrices and a masked
    copy: 3·heads·T² values for T tokens; measured 2.27·heads·T² at T = 6,000 with torch
    2.14: counted as 2·, the U-Net term of a 4000×3000 lcdc-q1 decode, 4.43 GiB, was under
    its measured 5.08 GiB)."""
    mults, ctx = list(mults), list(context_mults)
    chans = [channels * m for m in mults]
    ctxs = [channels * m for m in ctx] + [0] * (len(chans) - len(ctx))
    levels = len(chans)
    attn = set(attention_levels) | {levels - 1}  # the middle block always attends
    skips = channels * h * w
    peak = 0
    cur = channels
    for i, out in enumerate(chans):
        t = (h >> i) * (w >> i)
        skips += res_blocks * out * t + (out * (t >> 2) if i < levels - 1 else 0)
        up_in = (chans[i + 1] if i + 1 < levels else out) + out
        work = (max(cur + ctxs[i], up_in) + 3 * out) * t
        if i in attn:
            heads = max(1, out // head_channels)
            work = max(work, 4 * out * t + (3 * heads * t * t if attention_matrices else 0))
        peak = max(peak, work)
        cur = out
    return int((skips + peak) * batch * elem + (in_channels * h * w * 4 * batch * elem))


def rcc_block_bytes(n_chunks: int, k: int, d: int, block_elements: int) -> int:
    """Largest candidate block :func:`cdc.diffc.rcc.decode` generates for one step."""
    rows = min(n_chunks, max(1, block_elements // ((1 << k) * max(d, 1))))
    return rows * (1 << k) * d * 4


__all__ = ["DEFAULT_BUDGET", "GiB", "DecodeBudget", "parse_size", "rcc_block_bytes",
           "unet_bytes"]
