"""A compact copy of a metric trunk for **training losses** on a machine that cannot fetch.

A lent GPU machine gets at most 64 MiB of our files and reaches no package index, so the
LPIPS-VGG loss cannot fetch its VGG16 trunk there (58.9 MB in float32). This module keeps a
copy at a quarter of the size: each conv weight quantised to int8 per output channel
(symmetric, scale = max |w| / 127), biases in float32 — 14.7 MB. The file is made from the
verified float32 trunk, checked on load by a digest recorded here, and dequantised to
float32.

It is for losses only (``perceptual_trunk: int8`` in a training config, recorded in the
run): **never for an evaluation figure**, which always uses the exact trunk
(:func:`pipeline.metrics.fetch.load_trunk`). Measured on 64 centre crops (128 px) of
training photos against their AVIF decodes at qualities 0–60: LPIPS-VGG through the int8
trunk differs from the exact one by 0.19 % on average, 0.71 % at most (correlation
0.99999; `bench/lpips_int8.py`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from cdc.errors import WeightsError
from pipeline.metrics.fetch import cache_dir, load_trunk, tensor_digest

FORMAT = "cdc-toolkit.metric-trunk-int8/1"
#: tensor_digest of the quantised state ({name}.q int8, {name}.scale, biases) of each trunk.
INT8_SHA256 = {
    "vgg16": "8195443cf28fcf8389cf47f3a6c1e4c2a6c7060f3749d30c442f8d4aea6f6660",
}


def int8_path(net: str, root: str | Path | None = None) -> Path:
    """Where the int8 copy of ``net`` lives: beside the exact trunk in the cache."""
    return Path(root or cache_dir()) / "metrics" / f"{net}-int8.pt"


def quantize(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Conv weights → int8 (``.q``) and a per-output-channel float32 ``.scale``; the rest
    (biases) as they are."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if t.dim() == 4:
            scale = t.abs().amax(dim=(1, 2, 3)).clamp(min=1e-12) / 127
            out[f"{name}.q"] = torch.round(t / scale[:, None, None, None]).to(torch.int8)
            out[f"{name}.scale"] = scale.float()
        else:
            out[name] = t.float()
    return out


def dequantize(qstate: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 state dict a :func:`quantize` result stands for."""
    out: dict[str, torch.Tensor] = {}
    for name, t in qstate.items():
        if name.endswith(".q"):
            base = name.removesuffix(".q")
            out[base] = t.float() * qstate[f"{base}.scale"][:, None, None, None]
        elif not name.endswith(".scale"):
            out[name] = t.float()
    return out


def write_int8(net: str, root: str | Path | None = None,
               source_root: str | Path | None = None) -> Path:
    """Quantise the verified exact trunk of ``net`` (from the cache at ``source_root``, by
    default the usual one) and save it under ``root`` (the digest is checked)."""
    q = quantize(load_trunk(net, str(source_root) if source_root else None))
    digest = tensor_digest(q)
    if INT8_SHA256.get(net) and digest != INT8_SHA256[net]:
        raise WeightsError(f"int8 {net} trunk has digest {digest}, expected {INT8_SHA256[net]}")
    path = int8_path(net, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, "net": net, "tensor_sha256": digest, "state_dict": q}, tmp)
    tmp.replace(path)
    return path


@lru_cache(maxsize=2)
def load_int8(net: str, root: str | None = None) -> dict[str, torch.Tensor]:
    """The int8 copy of ``net``, digest-checked, dequantised to a float32 state dict."""
    path = int8_path(net, root)
    expected = INT8_SHA256.get(net)
    if not expected:
        raise WeightsError(f"no int8 copy of {net!r} is known")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        q = ck["state_dict"]
    except (OSError, RuntimeError, KeyError, TypeError) as e:
        raise WeightsError(f"{path}: unreadable int8 trunk ({type(e).__name__}); make it "
                           "with python -m pipeline.training.gpu_kit pack") from e
    if tensor_digest(q) != expected:
        raise WeightsError(f"{path}: tensor digest mismatch (corrupt or foreign file)")
    return dequantize(q)
