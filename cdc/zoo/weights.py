"""Weights files: save with entropy tables, load from the package, a path or a URL.

A weights file is ``torch.save`` of a plain dict (loadable with
``weights_only=True``): format tag, codec id, model id, config, state dict. The
state dict includes the CDF tables computed once by ``update()`` so encoder and
decoder code with identical tables. Its sha256 is the model's identity: streams
carry its first 8 bytes, archives the whole digest.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from compressai.models.utils import update_registered_buffers

from cdc.config import CDCConfig
from cdc.errors import WeightsError
from cdc.models import ConditionalDiffusionCompressor

FORMAT = "cdc-toolkit.weights/1"
REGISTRY_FILE = "models.json"
_ENTROPY_MODULES = {
    "entropy.hyper.entropy_bottleneck": ["_quantized_cdf", "_offset", "_cdf_length"],
    "entropy.y.gaussian_conditional": ["_quantized_cdf", "_offset", "_cdf_length", "scale_table"],
}


@dataclass
class LoadedModel:
    model: ConditionalDiffusionCompressor
    model_id: str
    sha256: str  # hex digest of the weights file
    source: str
    meta: dict[str, Any] = field(default_factory=dict)  # training facts, recommended tiers


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_bytes(model: ConditionalDiffusionCompressor, model_id: str, half: bool = False,
                  meta: dict[str, Any] | None = None) -> bytes:
    """Serialize a model (after ``update()``) to the bytes of a weights file.

    ``half`` stores floating-point network weights as fp16 to halve the file;
    the entropy model's parameters and tables always stay exact.
    """
    sd = model.state_dict()
    if sd["entropy.hyper.entropy_bottleneck._quantized_cdf"].numel() == 0:
        raise WeightsError("entropy tables are empty: call model.update() before export")
    if half:
        sd = {k: (v.half() if v.is_floating_point() and not k.startswith("entropy.") else v)
              for k, v in sd.items()}
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "codec": "cdc", "model_id": model_id,
                "config": model.cfg.to_dict(), "meta": meta or {}, "state_dict": sd}, buf)
    return buf.getvalue()


def model_from_dict(obj: dict[str, Any], source: str) -> tuple[ConditionalDiffusionCompressor, str]:
    """The CDC network of a validated weights dict (see ``cdc.zoo.loader.read_weights_dict``)."""
    try:
        cfg = CDCConfig.from_dict(obj["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: bad model config ({e})") from e
    model = ConditionalDiffusionCompressor(cfg)
    sd = dict(obj["state_dict"])
    for name, buffers in _ENTROPY_MODULES.items():
        update_registered_buffers(model.get_submodule(name), name, buffers, sd)
    sd = {k: v.float() if v.dtype == torch.float16 else v for k, v in sd.items()}
    own = set(model.state_dict())
    try:
        model.load_state_dict({k: v for k, v in sd.items() if k in own})
    except RuntimeError as e:
        raise WeightsError(f"{source}: weights do not fit config {cfg.name!r} ({e})") from e
    if model.entropy.entropy_bottleneck._quantized_cdf.numel() == 0:
        raise WeightsError(f"{source}: file has no entropy tables (export after update())")
    return model.eval(), str(obj.get("model_id", cfg.name))


def model_from_bytes(data: bytes, source: str) -> tuple[ConditionalDiffusionCompressor, str]:
    from cdc.zoo.loader import read_weights_dict

    return _cdc_model_from_dict(read_weights_dict(data, source), source)


def _cdc_model_from_dict(obj: dict[str, Any], source: str
                         ) -> tuple[ConditionalDiffusionCompressor, str]:
    """The CDC network of a cdc or corrdiff weights dict (a corrdiff file holds its base)."""
    if obj.get("codec", "cdc") not in ("cdc", "corrdiff"):
        raise WeightsError(f"{source}: weights are for codec {obj.get('codec')!r}, not CDC")
    return model_from_dict(obj, source)


def registry() -> dict[str, dict[str, Any]]:
    """Shipped models: name → {file, sha256, config name, description, ...}."""
    path = resources.files("cdc.zoo") / REGISTRY_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def _read_source(source: str) -> bytes:
    if "://" in source:
        import fsspec

        try:
            with fsspec.open(source, "rb") as f:
                return f.read()
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"{source}: cannot read weights ({e})") from e
    path = Path(source)
    if not path.is_file():
        raise WeightsError(f"{source}: no such weights file (and no shipped model of that name: "
                           f"{', '.join(sorted(registry())) or 'none shipped'})")
    return path.read_bytes()


def read_verified_bytes(name_or_path: str, sha256: str | None = None) -> tuple[bytes, str]:
    """The bytes of shipped model ``name``, or of a weights file at a path or fsspec URL.

    The digest is checked against the registry for shipped models, against
    ``sha256`` when given, or against a sidecar ``<file>.sha256`` when present;
    a mismatch is an error, never a silently different model.
    """
    reg = registry()
    if name_or_path in reg:
        entry = reg[name_or_path]
        data = (resources.files("cdc.zoo") / entry["file"]).read_bytes()
        expected, source = entry["sha256"], f"shipped model {name_or_path!r}"
    else:
        data, source = _read_source(name_or_path), name_or_path
        expected = sha256
        if expected is None and "://" not in name_or_path:
            side = Path(name_or_path + ".sha256")
            if side.is_file():
                expected = side.read_text().split()[0]
    digest = sha256_hex(data)
    if expected is not None and digest != expected.lower():
        raise WeightsError(f"{source}: sha256 {digest} does not match the expected {expected}")
    return data, source


def load_weights(name_or_path: str, sha256: str | None = None) -> LoadedModel:
    """Load the CDC network of shipped model ``name`` or a weights file (digest-checked)."""
    from cdc.zoo.loader import read_weights_dict

    data, source = read_verified_bytes(name_or_path, sha256)
    obj = read_weights_dict(data, source)
    model, model_id = _cdc_model_from_dict(obj, source)
    return LoadedModel(model, model_id, sha256_hex(data), source, dict(obj.get("meta") or {}))
