"""The contract every codec of the toolkit (CDC, DiffC, CorrDiff) fulfils.

Modelled on CompressAI's compress()/decompress() pair, at the level of whole
images and self-contained byte streams, so pipeline and storage never need to
know which codec they are moving. :class:`cdc.base.BaseCodec` implements the shared
parts; everything the pipeline calls is declared here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

ImageLike = Image.Image | np.ndarray


@dataclass(frozen=True)
class DecodeSettings:
    """How to rebuild an image: the knobs a quality tier sets."""

    steps: int | None = None  # None: the model's default
    gamma: float | None = None  # None: the model's default (0 = deterministic)
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """A stable string for cache keys."""
        extra = ",".join(f"{k}={self.extra[k]}" for k in sorted(self.extra))
        return (f"steps={self.steps},gamma={self.gamma},seed={self.seed}"
                + (f",{extra}" if extra else ""))


@runtime_checkable
class RateControlled(Protocol):
    """Capability: the encoder meets any target rate itself (refine: it searches its base
    layer's quality per image), so ``--rate`` sets the target instead of choosing a model
    or cutting a prefix; ``psnr`` asks for a fidelity target instead (each image the fewest
    bytes that reach it, the rate then a cap). The pipeline asks
    ``isinstance(codec, RateControlled)``."""

    rate: float | None

    def with_rate(self, bpp: float | None = None, quality: int | None = None,
                  psnr: float | None = None) -> Any: ...


@runtime_checkable
class ImageCodec(Protocol):
    codec_id: str  # "cdc", "diffc", "corrdiff"
    model_id: str
    weights_sha256: str  # hex
    meta: dict[str, Any]  # the weights file's training facts and recommended tiers
    progressive: bool  # every prefix of a stream decodes
    plan_read_bytes: int  # leading bytes to fetch before planning a prefix (progressive)
    pad_multiple: int  # images are padded to this multiple

    def compress(self, image: ImageLike) -> bytes: ...

    def compress_batch(self, images: list[ImageLike]) -> list[bytes]: ...

    def decompress(self, data: bytes, steps: int | None = None, gamma: float | None = None,
                   seed: int = 0) -> Image.Image: ...

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None, seeds: list[int] | int = 0
                         ) -> list[Image.Image]: ...

    def info(self, data: bytes) -> dict[str, Any]: ...

    def decode_defaults(self) -> dict[str, Any]: ...

    def recommended_tiers(self) -> dict[str, dict[str, Any]] | None: ...

    def prepare_paths(self, settings: Sequence[DecodeSettings]) -> None: ...

    def decode_paths(self) -> list[tuple[int, float, int]]: ...

    def prefix_length(self, head: bytes, steps: int | None = None,
                      bpp: float | None = None) -> int: ...
