"""A refine codec that decodes on ONNX where it can and loads torch only where it must.

:class:`OnnxFirstRefineCodec` speaks the whole :class:`cdc.interface.ImageCodec` protocol
for archives (`cdc get`, `cdc export`, the HTTP service): the ``preview`` and ``standard``
decodes of a shipped TAEF2-latent refine model run on its
:class:`~cdc.refine.onnx_decoder.OnnxRefineDecoder` (no torch import: a `cdc get` of a
refine archive starts in a fraction of a second), and anything else — encoding, the
``high`` tier, a stream of other weights — goes to the torch :class:`RefineCodec`, loaded
by the callback on first need. Both decoders give the same pixels up to float rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from cdc.errors import WeightsError
from cdc.limits import DEFAULT_BUDGET, DecodeBudget
from cdc.refine.config import decode_defaults, recommended_tiers
from cdc.refine.onnx_decoder import OnnxRefineDecoder
from cdc.refine.stream import PLAN_READ_BYTES, base_prefix_length, info

log = logging.getLogger(__name__)


class OnnxFirstRefineCodec:
    """The refine codec's protocol over an ONNX decoder, with torch as the fallback."""

    codec_id = "refine"
    progressive = True
    plan_read_bytes = PLAN_READ_BYTES
    rate_controlled = True
    min_steps = 0

    def __init__(self, decoder: OnnxRefineDecoder, load_torch: Callable[[], Any]):
        self.decoder = decoder
        self._load_torch = load_torch
        self._torch: Any = None
        self.model_id = decoder.model_id
        self.weights_sha256 = decoder.weights_sha256
        self.digest = decoder.digest
        self.meta: dict[str, Any] = dict(decoder.meta)
        self.budget: DecodeBudget = DEFAULT_BUDGET
        self.onnx_failure: str | None = None  # why the ONNX graphs could not run, if they could not

    # -- the torch codec, on first need ---------------------------------------------------
    @property
    def torch_codec(self) -> Any:
        if self._torch is None:
            self._torch = self._load_torch().with_budget(self.budget)
        return self._torch

    @property
    def torch_loaded(self) -> bool:
        return self._torch is not None

    def __getattr__(self, name: str) -> Any:  # config, device, with_rate, ... : torch's
        if name.startswith("_") or name in ("decoder",):
            raise AttributeError(name)
        return getattr(self.torch_codec, name)

    # -- what the archive stages ask without decoding -------------------------------------
    @property
    def config(self) -> Any:
        return self.decoder.config

    @property
    def pad_multiple(self) -> int:
        return int(self.decoder.config.pad_multiple)

    def decode_defaults(self) -> dict[str, Any]:
        return decode_defaults(self.decoder.config)

    def recommended_tiers(self) -> dict[str, dict[str, Any]] | None:
        return recommended_tiers(self.meta)

    def prefix_length(self, head: bytes, steps: int | None = None,
                      bpp: float | None = None) -> int:
        return base_prefix_length(head[:PLAN_READ_BYTES])

    def with_budget(self, budget: DecodeBudget | None) -> OnnxFirstRefineCodec:
        self.budget = budget if budget is not None else DEFAULT_BUDGET
        self.decoder.with_budget(self.budget)
        if self._torch is not None:
            self._torch.with_budget(self.budget)
        return self

    # -- decoding ---------------------------------------------------------------------------
    def decompress(self, data: bytes, steps: int | None = None, gamma: float | None = None,
                   seed: int = 0) -> Image.Image:
        return self.decompress_batch([data], steps, gamma, seed)[0]

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None, seeds: list[int] | int = 0
                         ) -> list[Image.Image]:
        if self.onnx_failure is None and self.decoder.supports(steps, gamma):
            try:
                return [self.decoder.decompress(d, steps, gamma) for d in datas]
            except WeightsError as e:  # a session that cannot be built: torch decodes
                self.onnx_failure = str(e)
                log.warning("decoding %s with torch from now on: %s", self.model_id, e)
        return self.torch_codec.decompress_batch(datas, steps, gamma, seeds)

    # -- encoding and the rest: torch -----------------------------------------------------
    def compress(self, image: Any) -> bytes:
        return self.torch_codec.compress(image)

    def compress_batch(self, images: list[Any]) -> list[bytes]:
        return self.torch_codec.compress_batch(images)

    def info(self, data: bytes) -> dict[str, Any]:
        return info(data, self.digest)

    def prepare_paths(self, settings: Sequence[Any]) -> None:
        self.torch_codec.prepare_paths(settings)

    def decode_paths(self) -> list[tuple[int, float, int]]:
        return self.torch_codec.decode_paths()
