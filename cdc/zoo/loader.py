"""One entry point that loads *any* codec of the toolkit from a weights file.

A weights file names its codec (``"codec": "cdc" | "diffc" | "corrdiff"``); pipeline,
storage and jobs call :func:`load_codec` / :func:`codec_from_bytes` and never need to
know which codec an archive was written with. Each codec class provides
``from_weights(obj, sha256, source, device=..., precision=...)`` taking the validated
dict of the file; the class is imported lazily so a codec's extra code is only loaded
when its weights are.
"""

from __future__ import annotations

import importlib
import io
from typing import Any

import torch

from cdc.errors import WeightsError
from cdc.zoo.weights import FORMAT, read_verified_bytes, sha256_hex

CODEC_CLASSES = {
    "cdc": "cdc.codec:CDCCodec",
    "diffc": "cdc.diffc.codec:DiffCCodec",
    "corrdiff": "cdc.corrdiff.codec:CorrDiffCodec",
}


def read_weights_dict(data: bytes, source: str) -> dict[str, Any]:
    """The validated top-level dict of a weights file (``torch.load(weights_only=True)``)."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{source}: not a readable weights file ({first[:200]})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"{source}: not a cdc-toolkit weights file (format {got!r})")
    return obj


def codec_class(codec_id: str) -> type:
    try:
        module, name = CODEC_CLASSES[codec_id].split(":")
    except KeyError:
        raise WeightsError(f"unknown codec {codec_id!r} in weights file; known: "
                           f"{', '.join(CODEC_CLASSES)}") from None
    return getattr(importlib.import_module(module), name)


def codec_from_bytes(data: bytes, source: str, device: str | torch.device = "cpu",
                     precision: str | None = None) -> Any:
    """Build the codec a weights file describes (any codec id)."""
    obj = read_weights_dict(data, source)
    cls = codec_class(str(obj.get("codec", "cdc")))
    return cls.from_weights(obj, sha256_hex(data), source, device=device, precision=precision)


def load_codec(name_or_path: str, device: str | torch.device = "cpu",
               precision: str | None = None, sha256: str | None = None) -> Any:
    """Shipped model name, weights path or fsspec URL → codec (digest-checked)."""
    data, source = read_verified_bytes(name_or_path, sha256)
    return codec_from_bytes(data, source, device=device, precision=precision)


DESCRIBERS = {
    "cdc": "cdc.codec:describe",
    "diffc": "cdc.diffc.codec:describe",
    "corrdiff": "cdc.codec:describe",  # same container and latents as CDC, plus its W section
}


def describe_stream(data: bytes) -> dict[str, Any]:
    """What ``cdc info`` shows for a stream of any codec (needs no model)."""
    from cdc.bitstream import CODEC_NAMES, MAGIC
    from cdc.errors import BadMagicError, CorruptStreamError

    if len(data) < 5 or data[:3] != MAGIC:
        raise BadMagicError("not a cdc-toolkit stream (bad magic)")
    name = CODEC_NAMES.get(data[4])
    if name is None:
        raise CorruptStreamError(f"unknown codec id {data[4]}")
    module, func = DESCRIBERS[name].split(":")
    return getattr(importlib.import_module(module), func)(data)
