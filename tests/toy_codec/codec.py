"""The toy codec: every step of docs/codec.md's "Adding a codec", in one small module.

1. Config: :class:`ToyConfig` and the presets :data:`TOY_CONFIGS`.
2. Codec class: :class:`ToyCodec` (a :class:`cdc.base.BaseCodec`); weights written with
   :func:`cdc.weights.pack_weights` (:func:`toy_weights`). Its "network" is a codebook: 16
   reconstruction levels per channel; the encoder sends each sample's nearest level as 4
   bits, packed two to a byte and zlib-compressed into section ``Q`` of the container.
3. Describer: :func:`describe` (``cdc info``, no model).
4. Trainer: none (nothing to train), so the entry leaves ``trainer`` empty.
5. Registration: :data:`ENTRY`, added with :func:`cdc.registry.register`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from cdc.base import BaseCodec
from cdc.bitstream import Container, symbols_crc
from cdc.errors import CorruptStreamError, SymbolMismatchError, WeightsError
from cdc.interface import ImageLike
from cdc.model_config import config_from_dict, config_to_dict
from cdc.registry import CodecEntry
from cdc.weights import pack_weights

NAME = "toy"
LEVELS = 16  # 4 bits per channel
SECTION = "Q"


@dataclass(frozen=True)
class ToyConfig:
    name: str = "toy-4bit"
    pad_multiple: int = 1  # no padding: the codebook works per sample
    default_steps: int = 1  # what archives record as the decode default (no steps here)
    zlib_level: int = 9


TOY_CONFIGS: dict[str, ToyConfig] = {"toy-4bit": ToyConfig()}


def toy_weights(seed: int = 0, config: str = "toy-4bit", meta: dict | None = None) -> bytes:
    """A weights file: evenly spaced levels, jittered by ``seed`` (another seed, another model)."""
    cfg = TOY_CONFIGS[config]
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, LEVELS)
    jitter = rng.integers(-3, 4, size=(3, LEVELS)) if seed else np.zeros((3, LEVELS))
    levels = np.clip(np.round(base + jitter), 0, 255).astype(np.uint8)
    return pack_weights(NAME, cfg.name, config_to_dict(cfg),
                        {"levels": torch.from_numpy(np.sort(levels, axis=1))}, meta)


class ToyCodec(BaseCodec):
    codec_id = NAME

    def __init__(self, cfg: ToyConfig, levels: np.ndarray, model_id: str, weights_sha256: str,
                 device: str | torch.device = "cpu", precision: str | None = None,
                 meta: dict[str, Any] | None = None):
        super().__init__(model_id, weights_sha256, device, precision, meta)
        self.cfg, self.levels = cfg, levels  # (3, 16) uint8, ascending per channel

    @classmethod
    def from_weights(cls, obj: dict[str, Any], sha256: str, source: str,
                     device: str | torch.device = "cpu", precision: str | None = None,
                     components: dict[str, dict[str, torch.Tensor]] | None = None) -> ToyCodec:
        try:
            cfg = config_from_dict(ToyConfig, obj["config"])
            levels = obj["state_dict"]["levels"].numpy()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise WeightsError(f"{source}: not a toy weights file ({e})") from e
        if levels.shape != (3, LEVELS) or levels.dtype != np.uint8:
            raise WeightsError(f"{source}: toy levels must be (3, {LEVELS}) uint8")
        return cls(cfg, levels, str(obj.get("model_id", cfg.name)), sha256, device, precision,
                   obj.get("meta"))

    @property
    def config(self) -> ToyConfig:
        return self.cfg

    def compress_batch(self, images: list[ImageLike]) -> list[bytes]:
        out = []
        for p in self.prepare(images):
            arr = p.array.astype(np.int16)  # (H, W, 3), the unpadded source
            dist = np.abs(arr[..., None] - self.levels.astype(np.int16)[None, None])
            symbols = dist.argmin(-1).astype(np.uint8)  # nearest level: (H, W, 3) in 0..15
            payload = zlib.compress(_pack_nibbles(symbols), self.cfg.zlib_level)
            out.append(self.container(p, {SECTION: payload}, symbols_crc(symbols.tobytes())))
        return out

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None, seeds: list[int] | int = 0
                         ) -> list[Image.Image]:
        return [self._decode(self.unpack(d)) for d in datas]  # steps, γ, seed: nothing to do

    def _decode(self, c: Container) -> Image.Image:
        h, w = c.height, c.width
        self.budget.check(f"a {w}×{h} toy stream", pixels=h * w)
        n = h * w * 3
        z = zlib.decompressobj()
        try:
            packed = z.decompress(c.section(SECTION), (n + 1) // 2)  # bounded: no zlib bomb
        except zlib.error as e:
            raise CorruptStreamError(f"section {SECTION!r}: {e}") from e
        if len(packed) != (n + 1) // 2 or not z.eof or z.unconsumed_tail or z.unused_data:
            raise CorruptStreamError(f"section {SECTION!r} does not hold {n} symbols")
        symbols = _unpack_nibbles(packed, n).reshape(h, w, 3)
        if symbols_crc(symbols.tobytes()) != c.symbols_crc:
            raise SymbolMismatchError("decoded symbols differ from the encoder's")
        return Image.fromarray(self.levels[np.arange(3), symbols])  # [..., c] = levels[c, s]


def _pack_nibbles(symbols: np.ndarray) -> bytes:
    flat = symbols.reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return ((flat[0::2] << 4) | flat[1::2]).astype(np.uint8).tobytes()


def _unpack_nibbles(packed: bytes, n: int) -> np.ndarray:
    b = np.frombuffer(packed, dtype=np.uint8)
    return np.stack([b >> 4, b & 0x0F], axis=1).reshape(-1)[:n]


def describe(data: bytes, config: Any = None) -> dict[str, Any]:
    """``cdc info`` for a toy stream (no model, no decode)."""
    c = Container.unpack(data)
    return {"codec": c.codec, "format_version": c.version,
            "model_digest": c.model_digest.hex(), "width": c.width, "height": c.height,
            "source": c.header.source_note, "bytes": len(data),
            "bpp": 8 * len(data) / (c.width * c.height), "header_bytes": c.header_bytes,
            "sections": {k: len(v) for k, v in c.sections.items()},
            "symbols_crc32": f"{c.symbols_crc:08x}"}


#: The registration: an unused id byte, this module's parts, no trainer.
ENTRY = CodecEntry(NAME, 0xF0, "tests.toy_codec.codec:ToyCodec", "tests.toy_codec.codec:describe",
                   "tests.toy_codec.codec:TOY_CONFIGS", summary="toy: 4-bit codebook + zlib")
