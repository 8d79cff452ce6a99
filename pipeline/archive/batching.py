"""Batching by size: which images can share one forward pass.

A codec pads every image to a multiple of its downsampling factor, and only images of
one padded size stack into a batch. Grouping by padded size, capped by count and by
pixels (memory), lets ``compress_batch`` run one pass per group instead of one per image.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_BATCH_PIXELS = 8 * 1024 * 1024  # one forward pass stacks at most ~8 MP


def padded(h: int, w: int, multiple: int) -> tuple[int, int]:
    return h + (-h) % multiple, w + (-w) % multiple


def group_batches(sizes: Sequence[tuple[int, int]], multiple: int,
                  batch_size: int = DEFAULT_BATCH_SIZE,
                  max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS) -> list[list[int]]:
    """Indices grouped by padded (h, w) so each batch stacks, capped by count and pixels.

    Order is kept within a group; groups come in order of first appearance.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        groups.setdefault(padded(h, w, multiple), []).append(i)
    out: list[list[int]] = []
    for (ph, pw), idx in groups.items():
        per = max(1, min(batch_size, max_batch_pixels // max(1, ph * pw)))
        out += [idx[i:i + per] for i in range(0, len(idx), per)]
    return out
