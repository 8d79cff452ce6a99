"""Every codec the archive stages hold speaks the whole :class:`cdc.interface.ImageCodec`.

Toolkit codecs (:class:`cdc.base.BaseCodec`: CDC, DiffC, CorrDiff) do already. A
third-party object that implements only the core calls (compress, compress_batch,
decompress, info and its ids) is wrapped once, where it enters the pipeline
(:func:`full_codec`), in :class:`CoreCodec`, which answers the rest with what such a codec
implies: no prefixes, no per-tier decode paths, no recommended tiers, the padding of its
``config`` if it has one. The stages then call methods; none of them probes a codec.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from cdc import CodecError
from cdc.interface import DecodeSettings, ImageCodec, ImageLike

#: The padding assumed for a codec that declares none (the pixel models' multiple).
DEFAULT_PAD_MULTIPLE = 64


def full_codec(codec: Any) -> ImageCodec:
    """``codec`` itself when it has the whole protocol, else it wrapped in :class:`CoreCodec`."""
    if isinstance(codec, (CoreCodec, ImageCodec)):
        return codec
    return CoreCodec(codec)


class CoreCodec:
    """The full protocol over a codec with only the core calls (everything else delegated)."""

    progressive = False
    plan_read_bytes = 0

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # ids, compress, decompress, info, config, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def meta(self) -> dict[str, Any]:
        meta = getattr(self.inner, "meta", None)
        return dict(meta) if isinstance(meta, dict) else {}

    @property
    def pad_multiple(self) -> int:
        for obj in (self.inner, getattr(self.inner, "config", None)):
            m = getattr(obj, "pad_multiple", None)
            if isinstance(m, int) and not isinstance(m, bool) and m > 0:
                return m
        return DEFAULT_PAD_MULTIPLE

    def decode_defaults(self) -> dict[str, Any]:
        cfg = getattr(self.inner, "config", None)
        out: dict[str, Any] = {}
        for name in ("default_steps", "default_gamma"):
            v = getattr(cfg, name, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[name] = v
        return out

    def recommended_tiers(self) -> dict[str, dict[str, Any]] | None:
        return None

    def prepare_paths(self, settings: Sequence[DecodeSettings]) -> None:
        pass  # its streams do not depend on how they will be decoded

    def decode_paths(self) -> list[tuple[int, float, int]]:
        return []

    def prefix_length(self, head: bytes, steps: int | None = None,
                      bpp: float | None = None) -> int:
        raise CodecError(f"{self.inner.codec_id} streams do not decode from a prefix")

    def compress_batch(self, images: list[ImageLike]) -> list[bytes]:
        batch = getattr(self.inner, "compress_batch", None)
        return batch(images) if batch is not None else [self.inner.compress(im) for im in images]

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None, seeds: list[int] | int = 0
                         ) -> list[Image.Image]:
        batch = getattr(self.inner, "decompress_batch", None)
        if batch is not None:
            return batch(datas, steps=steps, gamma=gamma, seeds=seeds)
        seeds = [seeds] * len(datas) if isinstance(seeds, int) else list(seeds)
        return [self.inner.decompress(d, steps=steps, gamma=gamma, seed=s)
                for d, s in zip(datas, seeds)]


def weights_digest(codec: Any) -> str:
    """The digest an archive records for the codec's weights (``Archive.check_model``)."""
    return "sha256:" + codec.weights_sha256


def pad_multiple(codec: Any) -> int:
    """The size multiple ``codec`` pads images to (images of one padded size stack)."""
    return full_codec(codec).pad_multiple


def codec_config(codec: Any) -> dict[str, Any]:
    """What an archive records about the codec's decoding defaults (any codec)."""
    codec = full_codec(codec)
    return {"pad_multiple": codec.pad_multiple, **codec.decode_defaults()}
