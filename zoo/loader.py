"""One entry point that loads *any* codec of the toolkit from a weights file.

A weights file names its codec (an id of :data:`cdc.registry.CODECS`) and, for models
on a pretrained space, the sha256 of each component; pipeline, storage and jobs call
:func:`load_codec` / :func:`codec_from_bytes` and never need to know which codec an
archive was written with. The codec class comes from :mod:`cdc.registry`; its
``from_weights(obj, sha256, source, device=, precision=, components=)`` gets the validated
dict and the component state dicts, read and digest-checked here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cdc.errors import WeightsError
from cdc.registry import CODECS, codec_class, codec_of, resolve
from cdc.weights import read_weights_dict, space_of
from zoo.components import component_states
from zoo.store import read_verified_bytes, registry, sha256_hex, shipped_by_digest


@dataclass
class LoadedModel:
    model: Any
    model_id: str
    sha256: str  # hex digest of the weights file
    source: str
    meta: dict[str, Any] = field(default_factory=dict)  # training facts, recommended tiers


def components_for(obj: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """The pretrained component state dicts a weights dict names (digest-checked)."""
    _, digests = space_of(obj)
    return component_states(digests)


def fetch_by_digest(sha: str, codec: str, model_id: str, source: str) -> dict[str, Any]:
    """The validated weights dict of the ``codec`` file with sha256 ``sha`` that ``source``
    names (shipped, or in the local model cache): what a codec's ``complete_weights`` hook
    asks for (:data:`cdc.weights.FetchWeights`)."""
    from zoo.cache import cache_dir, find_model

    found = find_model(sha, codec)
    if found is None or found[1] != sha:
        raise WeightsError(f"{source}: needs the {codec} model {model_id!r} (sha256 {sha[:16]}…), "
                           f"which is neither shipped nor in the local model cache "
                           f"({cache_dir()}); load that file once with -m PATH")
    data, found_source = read_verified_bytes(found[0], sha)
    return read_weights_dict(data, found_source)


def read_full_dict(data: bytes, source: str) -> dict[str, Any]:
    """The validated weights dict, self-contained: a file that names other weights files by
    digest is completed by its codec's registered ``complete_weights`` hook."""
    obj = read_weights_dict(data, source)
    found = CODECS.get(codec_of(obj))
    if found is None or not found.complete_weights:
        return obj
    return resolve(found.complete_weights)(obj, source, fetch_by_digest)


def codec_from_bytes(data: bytes, source: str, device: str | torch.device = "cpu",
                     precision: str | None = None) -> Any:
    """Build the codec a weights file describes (any registered codec id)."""
    obj = read_full_dict(data, source)
    name = codec_of(obj)
    if name not in CODECS:
        raise WeightsError(f"unknown codec {name!r} in weights file; known: {', '.join(CODECS)}")
    sha = sha256_hex(data)
    codec = codec_class(name).from_weights(obj, sha, source, device=device,
                                           precision=precision, components=components_for(obj))
    shipped = registry().get(shipped_by_digest(sha) or "", {})
    if shipped.get("sha256") == sha and shipped.get("encode_defaults"):
        codec.with_encode_defaults(**shipped["encode_defaults"])  # the registry's, not the file's
    return codec


def load_codec(name_or_path: str, device: str | torch.device = "cpu",
               precision: str | None = None, sha256: str | None = None) -> Any:
    """Shipped model name, weights path or fsspec URL → codec (digest-checked)."""
    data, source = read_verified_bytes(name_or_path, sha256)
    return codec_from_bytes(data, source, device=device, precision=precision)


def codec_for_stream(data: bytes, device: str | torch.device = "cpu",
                     precision: str | None = None) -> Any:
    """The codec a stream names by its header's codec id and weights digest: the shipped
    model with that digest, else a model in the local model cache (:mod:`zoo.cache`);
    ``WeightsError`` if neither (then load it by path or URL with :func:`load_codec`)."""
    from cdc.bitstream import read_header
    from zoo.cache import cache_dir, find_model

    h = read_header(bytes(data[:64]), validate=False)
    found = find_model(h.model_digest.hex(), h.codec)
    if found is None:
        raise WeightsError(f"the stream was written by a {h.codec} model with weights "
                           f"{h.model_digest.hex()}…, which is not a shipped model (nor in the "
                           f"local model cache, {cache_dir()})")
    return load_codec(found[0], device=device, precision=precision, sha256=found[1])


def load_weights(name_or_path: str, sha256: str | None = None) -> LoadedModel:
    """The CDC network (of any file whose codec holds one) with its meta, read once
    (digest-checked)."""
    data, source = read_verified_bytes(name_or_path, sha256)
    from cdc.codec import cdc_model

    obj = read_full_dict(data, source)
    model, model_id = cdc_model(obj, source, components_for(obj))
    return LoadedModel(model, model_id, sha256_hex(data), source, dict(obj.get("meta") or {}))


def describe_stream(data: bytes) -> dict[str, Any]:
    """What ``cdc info`` shows for a stream of any codec (needs no model)."""
    from cdc.describe import describe_stream as describe

    return describe(data)


def model_from_bytes(data: bytes, source: str) -> tuple[Any, str]:
    """The CDC network (and model id) of the bytes of a weights file that holds one."""
    from cdc.codec import cdc_model

    obj = read_full_dict(data, source)
    return cdc_model(obj, source, components_for(obj))
