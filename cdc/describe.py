"""``cdc info`` for a stream of any codec, without a model (the codec byte picks the describer).

Light on purpose: this module, :mod:`cdc.bitstream`, :mod:`cdc.registry` and the describers
import no torch, numpy or CompressAI, so ``cdc info`` starts in a fraction of a second. The
header is read by :func:`cdc.bitstream.read_header`, the one parser ``decompress`` uses too:
whatever ``info`` refuses, decoding refuses with the same error, and the other way round.
"""

from __future__ import annotations

from typing import Any

from cdc.bitstream import Container, read_header
from cdc.errors import BitstreamError, CorruptStreamError
from cdc.model_config import HYPER_FACTOR, LATENT_STRIDE
from cdc.registry import entry, resolve


def describe_stream(data: bytes, config: Any = None) -> dict[str, Any]:
    """What ``cdc info`` shows; ``config`` (the model's, when known) refines latent shapes.

    Raises only ``BitstreamError``s (anything else a describer hits on a malformed stream
    becomes ``CorruptStreamError``), so ``cdc info`` always answers in one line."""
    name = read_header(bytes(data[:64]), validate=False).codec  # magic, version, codec id
    describer = resolve(entry(name).describe)
    try:
        return describer(data, config) if config is not None else describer(data)
    except BitstreamError:
        raise
    except Exception as e:  # noqa: BLE001 - a describer's bug must not become a traceback
        raise CorruptStreamError(f"cannot describe the stream ({type(e).__name__}: {e})") from e


def latent_shapes(cfg: Any, h: int, w: int) -> dict[str, tuple[int, int]]:
    """Shapes of y and the hyper latent z for an h×w image (pixel-space CDC when no config)."""
    ys = cfg.latent_stride if cfg else LATENT_STRIDE
    m = ys * HYPER_FACTOR
    ph, pw = h + (-h) % m, w + (-w) % m
    return {"y": (ph // ys, pw // ys), "hyper": (ph // m, pw // m)}


def describe_container(data: bytes, config: Any = None) -> dict[str, Any]:
    """``cdc info`` for CDC and CorrDiff streams (``config`` gives latent models' strides)."""
    c = Container.unpack(data)
    shapes = latent_shapes(config, c.height, c.width)
    m = (config.pad_multiple if config else LATENT_STRIDE * HYPER_FACTOR)
    ph, pw = c.height + (-c.height) % m, c.width + (-c.width) % m
    return {
        "codec": c.codec,
        "format_version": c.version,
        "model_digest": c.model_digest.hex(),
        "width": c.width,
        "height": c.height,
        "padded": f"{pw}x{ph} ({'replicate' if c.header.replicate else 'reflect'})",
        "latent_shapes": {"y": list(shapes["y"]), "z": list(shapes["hyper"])},
        "source": c.header.source_note,
        "bytes": len(data),
        "bpp": 8 * len(data) / (c.width * c.height),
        "header_bytes": c.header_bytes,
        "sections": {k: len(v) for k, v in c.sections.items()},
        "symbols_crc32": f"{c.symbols_crc:08x}",
    }


__all__ = ["describe_container", "describe_stream", "latent_shapes"]
