"""The perceptual window of latent CDC training covers both axes of non-square crops."""

from __future__ import annotations

import torch

from cdc.objectives import random_window


def test_offsets_span_each_axis_on_its_own() -> None:
    torch.manual_seed(0)
    got = [random_window(4, 16, 4) for _ in range(400)]
    assert {g[2:] for g in got} == {(4, 4)}
    assert {g[0] for g in got} == {0}  # the short axis is taken whole
    assert {g[1] for g in got} == set(range(13))  # every left offset of the long axis
    got = [random_window(16, 4, 4) for _ in range(400)]
    assert {g[0] for g in got} == set(range(13)) and {g[1] for g in got} == {0}


def test_a_side_shorter_than_the_window_is_taken_whole() -> None:
    assert random_window(3, 10, 8)[2:] == (3, 8)
    assert random_window(5, 5, 8) == (0, 0, 5, 5)
