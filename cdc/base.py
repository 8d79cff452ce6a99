"""What every codec shares: identity, device and precision, ``meta``, batching, the container.

:class:`BaseCodec` is the one place for the bookkeeping the three codecs used to repeat
(device, autocast table, digest, the weights file's ``meta``, grouping images by padded
size, packing the container), and for the hooks the pipeline needs
(:class:`cdc.interface.ImageCodec` declares them), so ``pipeline`` calls methods instead
of probing attributes. A codec subclass supplies ``from_weights``, ``compress_batch``,
``decompress_batch`` and its ``config``.

Decoding is bounded and typed: every codec holds a :class:`cdc.limits.DecodeBudget`
(``codec.budget``, the defaults unless the caller sets another) and checks what a stream
claims against it before allocating; and every decode entry point a subclass defines (any
public method that takes a stream: see :func:`is_decode_entry_point`, no list of names) is
wrapped so that nothing but a :class:`cdc.errors.CodecError` leaves it: an unexpected
exception from below (torch, CompressAI's C++ coder, numpy) on a
stream becomes a ``CorruptStreamError`` naming it, running out of memory a
``ResourceLimitError``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from cdc.bitstream import DIGEST_BYTES, Container, flags_for
from cdc.errors import CodecError, CorruptStreamError, ResourceLimitError, WeightsError
from cdc.image import (
    SourceMode,
    array_to_tensor,
    first_frame_only,
    pad_to_multiple,
    to_rgb_array,
)
from cdc.interface import DecodeSettings, ImageLike
from cdc.limits import DEFAULT_BUDGET, DecodeBudget

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
    first_frame: bool = False  # the first frame of a multi-frame input (flag bit 7)

    @property
    def flags(self) -> int:
        return flags_for(self.mode, self.replicate, self.first_frame)


#: Parameter annotations that mark a method as taking a stream, streams or a parsed one.
STREAM_TYPES = ("bytes", "Container", "list[bytes]", "Sequence[bytes]")


def is_decode_entry_point(name: str, fn: Any) -> bool:
    """A public function whose parameters include a stream (annotated ``bytes``,
    ``list[bytes]`` or ``Container``): whatever a codec adds that reads streams is wrapped
    by :func:`typed_decode_errors` without being named anywhere."""
    import inspect

    if name.startswith("_") or not inspect.isfunction(fn):
        return False
    params = list(inspect.signature(fn).parameters.values())[1:]  # after self
    return any(str(p.annotation).split(" |")[0].strip() in STREAM_TYPES for p in params
               if p.annotation is not inspect.Parameter.empty)


def _out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, MemoryError) or "can't allocate memory" in text \
        or "out of memory" in text.lower() or "not enough memory" in text.lower()


def typed_decode_errors(fn: Callable) -> Callable:
    """Wrap a decode entry point: ``CodecError`` passes, anything else becomes one."""
    if getattr(fn, "_typed_decode_errors", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CodecError:
            raise
        except TypeError as e:
            if "expected bytes" in str(e):  # the caller passed no stream at all
                raise
            raise CorruptStreamError(f"decoding failed ({type(e).__name__}: {e})") from e
        except Exception as e:  # noqa: BLE001 - the point: no untyped error escapes
            if _out_of_memory(e):
                raise ResourceLimitError(
                    f"decoding ran out of memory ({type(e).__name__}: {e}); lower the decode "
                    "budget's max_alloc_bytes to refuse such streams up front",
                    "max_alloc_bytes") from e
            raise CorruptStreamError(f"decoding failed ({type(e).__name__}: {e})") from e

    wrapper._typed_decode_errors = True  # type: ignore[attr-defined]
    return wrapper


class BaseCodec:
    codec_id: ClassVar[str] = ""
    #: Every prefix of a stream decodes (DiffC): readers may fetch only a prefix.
    progressive: ClassVar[bool] = False
    #: Leading bytes a reader fetches to plan a prefix (progressive codecs).
    plan_read_bytes: ClassVar[int] = 0
    #: Fewest decode steps: 0 where a stream carries a base layer that decodes alone.
    min_steps: ClassVar[int] = 1

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
        #: What one decode may claim (pixels, steps, symbols, memory): set another to change.
        self.budget: DecodeBudget = DEFAULT_BUDGET

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, fn in list(cls.__dict__.items()):
            if is_decode_entry_point(name, fn):
                setattr(cls, name, typed_decode_errors(fn))

    def with_budget(self, budget: DecodeBudget | None) -> BaseCodec:
        """Set the decode budget (None: the defaults); returns the codec."""
        self.budget = budget if budget is not None else DEFAULT_BUDGET
        return self

    def with_encode_defaults(self, **defaults: Any) -> BaseCodec:
        """Change what the encoder writes by default without changing the weights (whose
        digest every stream names): the registry's ``encode_defaults`` of a shipped model.
        A codec without such settings refuses any."""
        if defaults:
            raise ValueError(f"{self.codec_id} codec has no encoder defaults {sorted(defaults)}")
        return self

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

    @typed_decode_errors
    def prefix_length(self, head: bytes, steps: int | None = None, bpp: float | None = None
                      ) -> int:
        """Bytes of the longest decodable prefix within ``bpp`` (progressive codecs only)."""
        from cdc.errors import DecodeSettingsError

        raise DecodeSettingsError(f"{self.codec_id} streams do not decode from a prefix")

    # -- shared mechanics ------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)

    def prepare(self, images: Sequence[ImageLike]) -> list[Prepared]:
        out = []
        for img in images:
            arr, mode = to_rgb_array(img)
            x, replicate = pad_to_multiple(array_to_tensor(arr), self.pad_multiple)
            out.append(Prepared(x, arr.shape[0], arr.shape[1], mode, replicate, arr,
                                first_frame_only(img)))
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

    def unet_alloc(self, h: int, w: int, batch: int = 1, cfg: Any = None,
                   context: bool = True) -> int:
        """Estimated peak bytes of one U-Net evaluation at (h, w) in the networks' space."""
        from cdc.limits import unet_bytes

        cfg = cfg or self.config
        mults = tuple(cfg.channel_mults)
        return unet_bytes(
            h, w, channels=cfg.unet_channels, mults=mults,
            context_mults=tuple(cfg.context_mults) if context else (0,) * len(mults),
            res_blocks=cfg.num_res_blocks, attention_levels=tuple(cfg.attention_levels),
            head_channels=cfg.attention_head_channels,
            in_channels=getattr(cfg, "space_channels", 3), batch=batch,
            elem=2 if self.autocast_dtype is not None else 4,
            attention_matrices=self.device.type != "cuda")

    # -- the ImageCodec calls ---------------------------------------------------------------
    def compress(self, image: ImageLike) -> bytes:
        return self.compress_batch([image])[0]

    def compress_batch(self, images: list[ImageLike]) -> list[bytes]:
        raise NotImplementedError

    @typed_decode_errors
    def decompress(self, data: bytes, steps: int | None = None, gamma: float | None = None,
                   seed: int = 0) -> Image.Image:
        return self.decompress_batch([data], steps=steps, gamma=gamma, seeds=[seed])[0]

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None, seeds: list[int] | int = 0
                         ) -> list[Image.Image]:
        raise NotImplementedError

    @typed_decode_errors
    def info(self, data: bytes) -> dict[str, Any]:
        from cdc.describe import describe_stream

        d = describe_stream(data, self.config)
        d["model_matches"] = d["model_digest"] == self.digest.hex()
        return d


for _name, _fn in list(vars(BaseCodec).items()):  # the base's own stream readers too
    if is_decode_entry_point(_name, _fn):
        setattr(BaseCodec, _name, typed_decode_errors(_fn))
