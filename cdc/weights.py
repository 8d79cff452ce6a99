"""Weights files as bytes ↔ models (no I/O: the zoo reads and writes the files).

A weights file is ``torch.save`` of a plain dict (loadable with ``weights_only=True``):
format tag, codec id, model id, config, ``meta`` (training facts, recommended tiers),
state dict — and for models on a pretrained space, the space's spec and the sha256 of
each pretrained component it needs (``components``), which are never copied into the
file. The state dict includes the CDF tables computed once by ``update()`` so encoder
and decoder code with identical tables. The file's sha256 is the model's identity:
streams carry its first 8 bytes, archives the whole digest.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from cdc.errors import WeightsError
from cdc.model_config import CDCConfig
from cdc.spaces import Space

if TYPE_CHECKING:  # CompressAI only where a CDC network is built (other codecs' files need none)
    from cdc.models import ConditionalDiffusionCompressor

FORMAT = "cdc-toolkit.weights/1"

#: What a codec's ``complete_weights`` hook (:class:`cdc.registry.CodecEntry`) gets from the
#: zoo: ``fetch(sha256, codec, model_id, source)`` is the validated dict of the weights file
#: with that digest (shipped or in the local model cache), else a ``WeightsError``. cdc
#: itself reads no files, so the codec asks and the zoo reads.
FetchWeights = Callable[[str, str, str, str], dict[str, Any]]
_ENTROPY_MODULES = {
    "entropy.hyper.entropy_bottleneck": ["_quantized_cdf", "_offset", "_cdf_length"],
    "entropy.y.gaussian_conditional": ["_quantized_cdf", "_offset", "_cdf_length", "scale_table"],
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


def space_of(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(space spec, component name → sha256) a weights dict asks for (pixels: none)."""
    spec = dict(obj.get("space") or {"name": "pixel"})
    return spec, dict(obj.get("components") or {})


def pack_weights(codec: str, model_id: str, config: dict[str, Any], state_dict: dict[str, Any],
                 meta: dict[str, Any] | None = None, space: Space | None = None,
                 **extra: Any) -> bytes:
    """The bytes of a weights file (one layout for every codec)."""
    obj: dict[str, Any] = {"format": FORMAT, "codec": codec, "model_id": model_id,
                           "config": config, "meta": meta or {}, "state_dict": state_dict}
    if space is not None and space.name != "pixel":
        obj["space"], obj["components"] = space.spec(), space.components()
    obj.update(extra)
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


#: What stays exact when network weights are stored as fp16: the entropy coders' tables,
#: quantiles and parameters (the hyper networks h_a/h_s may be fp16: both ends load the
#: same stored values and run h_s in float64).
EXACT_PREFIXES = ("entropy.hyper.entropy_bottleneck.", "entropy.y.")


def half_state(sd: dict[str, torch.Tensor], keep: tuple[str, ...] = EXACT_PREFIXES) -> dict:
    """Floating-point tensors as fp16, except those under ``keep`` (the coders stay exact)."""
    return {k: (v.half() if v.is_floating_point() and not k.startswith(keep) else v)
            for k, v in sd.items()}


def weights_bytes(model: ConditionalDiffusionCompressor, model_id: str, half: bool = False,
                  meta: dict[str, Any] | None = None) -> bytes:
    """Serialize a CDC model (after ``update()``) to the bytes of a weights file.

    ``half`` stores floating-point network weights as fp16 to halve the file;
    the entropy model's parameters and tables always stay exact.
    """
    sd = model.network_state_dict()
    if sd["entropy.hyper.entropy_bottleneck._quantized_cdf"].numel() == 0:
        raise WeightsError("entropy tables are empty: call model.update() before export")
    if half:
        sd = half_state(sd)
    return pack_weights("cdc", model_id, model.cfg.to_dict(), sd, meta, model.space)


def model_from_dict(obj: dict[str, Any], source: str, space: Space | None = None
                    ) -> tuple[ConditionalDiffusionCompressor, str]:
    """The CDC network of a validated weights dict, on ``space`` (pixels: None).

    Which codecs' files hold one is the caller's check (:func:`cdc.codec.cdc_model` asks the
    registry whether the file's codec class is a CDC codec), so no codec is named here.
    """
    from compressai.models.utils import update_registered_buffers

    from cdc.models import ConditionalDiffusionCompressor

    try:
        cfg = CDCConfig.from_dict(obj["config"])
        model = ConditionalDiffusionCompressor(cfg, space)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: bad model config ({e})") from e
    sd = dict(obj["state_dict"])
    for name, buffers in _ENTROPY_MODULES.items():
        update_registered_buffers(model.get_submodule(name), name, buffers, sd)
    sd = {k: v.float() if v.dtype == torch.float16 else v for k, v in sd.items()}
    own = model.state_dict()
    sd.update({k: v for k, v in own.items() if k.startswith("space.")})  # frozen, by digest
    try:
        model.load_state_dict({k: v for k, v in sd.items() if k in own})
    except RuntimeError as e:
        raise WeightsError(f"{source}: weights do not fit config {cfg.name!r} ({e})") from e
    if model.entropy.entropy_bottleneck._quantized_cdf.numel() == 0:
        raise WeightsError(f"{source}: file has no entropy tables (export after update())")
    return model.eval(), str(obj.get("model_id", cfg.name))
