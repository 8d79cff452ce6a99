"""What the archive stages ask a codec beyond compress/decompress, in one place.

Every toolkit codec is a :class:`cdc.base.BaseCodec` and answers all of it through the
:class:`cdc.interface.ImageCodec` protocol. A third-party object that implements only the
core calls (compress, compress_batch, decompress, info and its ids) still works: each
function here falls back to what such a codec implies (no batch decode, no prefixes,
the model's config if it has one), so the fallbacks live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def _hook(codec: Any, name: str) -> Any:
    return getattr(codec, name, None)


def weights_digest(codec: Any) -> str:
    """The digest an archive records for the codec's weights (``Archive.check_model``)."""
    return "sha256:" + codec.weights_sha256


def pad_multiple(codec: Any) -> int:
    """The size multiple ``codec`` pads images to (images of one padded size stack)."""
    for obj in (codec, _hook(codec, "config")):
        m = getattr(obj, "pad_multiple", None)
        if isinstance(m, int) and m > 0:
            return m
    return 64


def codec_config(codec: Any) -> dict[str, Any]:
    """What an archive records about the codec's decoding defaults (any codec)."""
    out: dict[str, Any] = {"pad_multiple": pad_multiple(codec)}
    defaults = _hook(codec, "decode_defaults")
    if defaults is not None:
        return {**out, **defaults()}
    cfg = _hook(codec, "config")
    for name in ("default_steps", "default_gamma"):
        v = getattr(cfg, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = v
    return out


def recommended_tiers(codec: Any) -> dict[str, Any] | None:
    """The tier table the model's weights file recommends (``meta["tiers"]``), if any."""
    tiers = _hook(codec, "recommended_tiers")
    return tiers() if tiers is not None else None


def is_progressive(codec: Any) -> bool:
    """Whether every prefix of the codec's streams decodes (DiffC)."""
    return bool(_hook(codec, "progressive"))


def prepare_paths(codec: Any, settings: Sequence[Any]) -> None:
    """Tell a codec whose streams depend on their decode settings (CorrDiff) the tiers'."""
    hook = _hook(codec, "prepare_paths")
    if hook is not None:
        hook(settings)


def current_paths(codec: Any) -> list[Any]:
    """The decode paths the codec currently encodes for (CorrDiff; else empty)."""
    hook = _hook(codec, "decode_paths")
    return list(hook()) if hook is not None else []


def batch_decoder(codec: Any) -> Callable[..., Any] | None:
    """``decompress_batch`` when the codec has one (else decode one stream at a time)."""
    return _hook(codec, "decompress_batch")


def plan_read_bytes(codec: Any) -> int:
    """How many leading bytes of a stream a progressive codec needs to plan a prefix."""
    return codec.plan_read_bytes


def prefix_length(codec: Any, head: bytes, bpp: float) -> int:
    """The length of the longest decodable prefix within ``bpp`` (progressive codecs)."""
    return codec.prefix_length(head, bpp=bpp)
