"""What every codec shares: identity, device and precision, ``meta``, batching, the container.

:class:`BaseCodec` is the one place for the bookkeeping the three codecs used to repeat
(device, autocast table, digest, the weights file's ``meta``, grouping images by padded
size, packing the container), and for the hooks the pipeline needs
(:class:`cdc.interface.ImageCodec` declares them), so ``pipeline`` calls methods instead
of probing attributes. A codec subclass supplies ``from_weights``, ``compress_batch``,
``decompress_batch`` and its ``config``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from cdc.bitstream import DIGEST_BYTES, Container
from cdc.errors import WeightsError
from cdc.image import SourceMode, array_to_tensor, pad_to_multiple, to_rgb_array
from cdc.interface import DecodeSettings, ImageLike

#: precision name → autocast dtype (None: fp32, autocast off).
AUTOCAST: dict[str | None, torch.dtype | None] = {
    "bf16": torch.bfloat16, "fp16": torch.float16, None: None, "fp32": None}


@dataclass
class Prepared:
    """One input image as the networks take it: padded tensor plus what the header needs."""

    x: Tensor  # (1, 3, H', W') in [-1, 1], padded
    height: int
    width: int
    mode: SourceMode
    replicate: bool
    array: Any = None  # the (H, W, 3) uint8 source (DiffC seeds its coder from it)

    @property
    def flags(self) -> int:
        return int(self.replicate) | (int(self.mode) << 1)


class BaseCodec:
    codec_id: ClassVar[str] = ""
    #: Every prefix of a stream decodes (DiffC): readers may fetch only a prefix.
    progressive: ClassVar[bool] = False
    #: Leading bytes a reader fetches to plan a prefix (progressive codecs).
    plan_read_bytes: ClassVar[int] = 0

    def __init__(self, model_id: str, weights_sha256: str, device: str | torch.device = "cpu",
                 precision: str | None = None, meta: dict[str, Any] | None = None):
        """``precision``: None/"fp32", or "bf16"/"fp16" autocast for the heavy networks."""
        if precision not in AUTOCAST:
            raise ValueError(f"precision must be one of fp32, bf16, fp16; got {precision!r}")
        self.device = torch.device(device)
        self.model_id = model_id
        self.weights_sha256 = weights_sha256
        self.digest = bytes.fromhex(weights_sha256)[:DIGEST_BYTES]
        self.autocast_dtype = AUTOCAST[precision]
        self.meta: dict[str, Any] = dict(meta or {})  # training facts, recommended tiers

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_weights(cls, obj: dict[str, Any], sha256: str, source: str,
                     device: str | torch.device = "cpu", precision: str | None = None,
                     components: dict[str, dict[str, Tensor]] | None = None) -> BaseCodec:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device = "cpu",
                        precision: str | None = None, sha256: str | None = None) -> Any:
        """Convenience for ``zoo.load_codec`` (the zoo does the reading), checked to be ``cls``."""
        import zoo  # the one call up: cdc itself reads no files

        codec = zoo.load_codec(name_or_path, device=device, precision=precision, sha256=sha256)
        if not isinstance(codec, cls):
            raise WeightsError(f"{name_or_path}: weights are for codec {codec.codec_id!r}, "
                               f"not {cls.codec_id!r}")
        return codec

    # -- what the pipeline asks ------------------------------------------------------------
    @property
    def config(self) -> Any:
        raise NotImplementedError

    @property
    def pad_multiple(self) -> int:
        """Images are padded to this multiple (equal padded sizes batch together)."""
        return int(self.config.pad_multiple)

    def decode_defaults(self) -> dict[str, Any]:
        """What a decode with no settings uses (archives record it)."""
        cfg = self.config
        return {"default_steps": cfg.default_steps,
                **({"default_gamma": cfg.default_gamma} if hasattr(cfg, "default_gamma") else {})}

    def recommended_tiers(self) -> dict[str, dict[str, Any]] | None:
        """The tier table the weights file recommends (``meta["tiers"]``), if any."""
        return self.meta.get("tiers")

    def prepare_paths(self, settings: Sequence[DecodeSettings]) -> None:
        """Decode settings (tiers) the next streams will be decoded with: codecs whose
        streams depend on them (CorrDiff) prepare for each; others ignore them."""

    def decode_paths(self) -> list[tuple[int, float, int]]:
        """The decode paths the codec currently encodes for (empty: any decode works)."""
        return []

    def prefix_length(self, head: bytes, steps: int | None = None, bpp: float | None = None
                      ) -> int:
        """Bytes of the longest decodable prefix within ``bpp`` (progressive codecs only)."""
        raise TypeError(f"{self.codec_id} streams do not decode from a prefix")

    # -- shared mechanics ------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)

    def prepare(self, images: Sequence[ImageLike]) -> list[Prepared]:
        out = []
        for img in images:
            arr, mode = to_rgb_array(img)
            x, replicate = pad_to_multiple(array_to_tensor(arr), self.pad_multiple)
            out.append(Prepared(x, arr.shape[0], arr.shape[1], mode, replicate, arr))
        return out

    @staticmethod
    def groups(shapes: Sequence[tuple[int, ...]]) -> Iterator[list[int]]:
        """Indices of equal shapes together (one forward pass per group), in first-seen order."""
        by: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(shapes):
            by.setdefault(tuple(s), []).append(i)
        yield from by.values()

    def container(self, p: Prepared, sections: dict[str, bytes], symbols_crc: int) -> bytes:
        return Container(codec=self.codec_id, model_digest=self.digest, height=p.height,
                         width=p.width, symbols_crc=symbols_crc, flags=p.flags,
                         sections=sections).pack()

    def unpack(self, data: bytes) -> Container:
        """Parse and verify a stream written by this codec with these weights."""
        c = Container.unpack(data)
        c.require(self.codec_id, self.digest, self.model_id)
        return c

    # -- the ImageCodec calls ---------------------------------------------------------------
    def compress(self, image: ImageLike) -> bytes:
        return self.compress_batch([image])[0]

    def compress_batch(self, images: list[ImageLike]) -> list[bytes]:
        raise NotImplementedError

    def decompress(self, data: bytes, steps: int | None = None, gamma: float | None = None,
                   seed: int = 0) -> Image.Image:
        return self.decompress_batch([data], steps=steps, gamma=gamma, seeds=[seed])[0]

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None, seeds: list[int] | int = 0
                         ) -> list[Image.Image]:
        raise NotImplementedError

    def info(self, data: bytes) -> dict[str, Any]:
        from cdc.describe import describe_stream

        d = describe_stream(data, self.config)
        d["model_matches"] = d["model_digest"] == self.digest.hex()
        return d
