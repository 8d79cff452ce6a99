"""A toy codec written by following docs/codec.md, "Adding a codec", step by step: 4 bits
per channel through a per-channel codebook (its weights), zlib-compressed, in the toolkit's
container. ``tests/test_toy_codec.py`` registers it (:data:`ENTRY`) and proves that it
needs nothing outside this package, its registration and its test."""

from tests.toy_codec.codec import ENTRY, TOY_CONFIGS, ToyCodec, ToyConfig, describe, toy_weights

__all__ = ["ENTRY", "TOY_CONFIGS", "ToyCodec", "ToyConfig", "describe", "toy_weights"]
