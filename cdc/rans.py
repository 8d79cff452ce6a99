"""Checks a string passes before CompressAI's rANS decoder (C++, no bounds checks) reads it.

``compressai.ans.RansDecoder.decode_with_indexes(string, indexes, cdfs, ...)`` decodes
``len(indexes)`` symbols from ``string`` without ever looking at the string's length: it
reads the 64-bit initial state (8 bytes), then, per symbol, at most one more 32-bit word
when renormalising, plus one word per 4-bit "bypass" group after an escape symbol. A
string shorter than what the symbols need makes it read past its buffer (a 289-byte stream
claiming 65535×65535 pixels read gigabytes and died of SIGSEGV). So, before every call:

1. **Shape.** The encoder writes whole 32-bit words and at least the 2-word final state:
   a string of under 8 bytes, or not a multiple of 4, was not written by it.
2. **Enough bytes for the symbols.** Each symbol coded with a CDF whose largest frequency
   is f (of 2^16) costs at least log2(2^16/f) bits, whatever its value, so a valid string
   holds at least the sum of those over the symbols (minus the coder's slack: < 64 bits of
   initial/final state, and integer rounding of < 4.5·10⁻⁵ bits per symbol and per word,
   counted as 10⁻⁴). That is a bound no valid stream violates; a crafted one that claims
   millions of symbols in a few hundred bytes fails it, before any C++ runs.
3. **Padding.** A string that passes 2 can still be garbage that decodes to expensive
   symbols; the decoder is handed the string followed by one zero word per symbol, so every
   renormalisation read stays inside the buffer. Valid strings decode identically (the
   decoder reads exactly the words the encoder wrote). Reads after an escape symbol are not
   bounded this way; they need a run of escape codes in data that also passed check 2, and
   the symbols' CRC-32 in the header rejects whatever they decode to.

No torch, no CompressAI here: callers pass the per-symbol bit costs (see
:func:`min_bits_from_cdf`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cdc.errors import CorruptStreamError

PRECISION = 16  # CompressAI's CDF precision
WORD_BYTES = 4
MIN_STRING_BYTES = 8  # the 64-bit final state
SLACK_BITS = 64.0
ROUNDING_BITS = 1e-4  # per symbol and per word: > the coder's 4.4e-5 worst case


def min_bits_from_cdf(cdf: Sequence[int], length: int | None = None) -> float:
    """The fewest bits any symbol coded with this CDF (CompressAI layout) costs."""
    n = len(cdf) if length is None else int(length)
    fmax = max((cdf[i + 1] - cdf[i] for i in range(n - 1)), default=1 << PRECISION)
    return math.log2((1 << PRECISION) / max(1, fmax))


def check_string(data: bytes, n_symbols: int, min_bits: float, what: str) -> None:
    """Raise ``CorruptStreamError`` unless ``data`` can be a rANS string of ``n_symbols``
    symbols that cost at least ``min_bits`` bits together (``what`` names it)."""
    n = len(data)
    if n < MIN_STRING_BYTES or n % WORD_BYTES:
        raise CorruptStreamError(f"{what}: a {n}-byte rANS string is not a whole number of "
                                 f"32-bit words (at least 2): not written by the encoder")
    slack = SLACK_BITS + ROUNDING_BITS * (n_symbols + n // WORD_BYTES)
    if 8 * n + slack < min_bits:
        raise CorruptStreamError(
            f"{what}: {n} bytes cannot hold the {n_symbols:,} symbols the header implies "
            f"(they need at least {math.ceil((min_bits - slack) / 8):,} bytes): truncated "
            "or crafted stream")


def padded(data: bytes, n_symbols: int) -> bytes:
    """``data`` followed by one zero word per symbol (see the module docstring, 3)."""
    return bytes(data) + bytes(WORD_BYTES * (int(n_symbols) + 2))


__all__ = ["check_string", "min_bits_from_cdf", "padded"]
