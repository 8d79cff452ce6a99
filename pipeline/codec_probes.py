"""Every place the pipeline asks a codec for something beyond ``cdc.ImageCodec``.

Codecs (CDC, DiffC, CorrDiff) share ``compress``/``compress_batch``/``decompress`` and
their ids; the rest differs per codec and is probed here, in one module, so that each
probe can be replaced by a protocol method in one place. The archive stages (planning,
encoding, tier policy, opening, the Reader) probe codecs only through this module;
outside them, ``pipeline/rate.py`` calls ``prefix_length`` and ``jobs/encode.py`` and
``jobs/eval_cli.py`` probe ``progressive`` (and ``config``) themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def weights_digest(codec: Any) -> str:
    """The digest an archive records for the codec's weights (``Archive.check_model``)."""
    return "sha256:" + codec.weights_sha256


def pad_multiple(codec: Any) -> int:
    """The size multiple ``codec`` pads images to (images of one padded size stack).

    Codecs are used through the ``cdc.ImageCodec`` protocol (CDC, DiffC, CorrDiff); only
    CDC's config is known here, other codecs may expose ``pad_multiple`` themselves.
    """
    for obj in (codec, getattr(codec, "config", None)):
        m = getattr(obj, "pad_multiple", None)
        if isinstance(m, int) and m > 0:
            return m
    return 64


def codec_config(codec: Any) -> dict[str, Any]:
    """What an archive records about the codec's decoding defaults (any codec)."""
    cfg = getattr(codec, "config", None)
    out: dict[str, Any] = {"pad_multiple": pad_multiple(codec)}
    for name in ("default_steps", "default_gamma"):
        v = getattr(cfg, name, getattr(codec, name, None))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = v
    return out


def recommended_tiers(codec: Any) -> dict[str, Any] | None:
    """The tier table the model's weights file recommends (``meta["tiers"]``), if any."""
    return (getattr(codec, "meta", None) or {}).get("tiers")


def is_progressive(codec: Any) -> bool:
    """Whether every prefix of the codec's streams decodes (DiffC)."""
    return getattr(codec, "progressive", False)


def path_setter(codec: Any) -> Callable[[Any], None] | None:
    """``set_paths`` of a codec whose streams depend on how they will be decoded
    (CorrDiff), else None."""
    return getattr(codec, "set_paths", None)


def current_paths(codec: Any) -> list[Any]:
    """The decode paths the codec currently encodes for (CorrDiff; else empty)."""
    return list(getattr(codec, "paths", []))


def batch_decoder(codec: Any) -> Callable[..., Any] | None:
    """``decompress_batch`` when the codec has one (else decode one stream at a time)."""
    return getattr(codec, "decompress_batch", None)


def plan_read_bytes(codec: Any) -> int:
    """How many leading bytes of a stream a progressive codec needs to plan a prefix."""
    return codec.plan_read_bytes


def prefix_length(codec: Any, head: bytes, bpp: float) -> int:
    """The length of the longest decodable prefix within ``bpp`` (progressive codecs)."""
    return codec.prefix_length(head, bpp=bpp)
