"""Export a latent refine model's standard decode path to ONNX (for :mod:`cdc.refine.onnx_decoder`).

Why: `cdc decompress` spends 1.5–2.8 s importing torch before it decodes anything; the
ONNX decoder needs numpy, Pillow and onnxruntime only. Five graphs, all with free height
and width: TAEF2's encoder and decoder each split where :class:`~cdc.spaces.taef2.TAEF2Space`
splits them (a full-resolution local part run in tiles, a stride-8 part run whole), and the
refiner's one deterministic step (x_N = 0, time (N−1)/N): zb ↦ zb + std·f(0, zb, t).
Float weights are stored as float16 when that is exact (the shipped weights are float16
already) and cast back to float32 inside the graph, which onnxruntime folds at load.
Returns bytes; writing files is the zoo's job.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cdc.refine.onnx_decoder import META_KEY
from cdc.spaces.taef2 import _DECODER_LOCAL, _ENCODER_LOCAL, TAEF2Space

OPSET = 17


class _StandardStep(nn.Module):
    """The refiner's 1-step γ = 0 path on a TAEF2 latent: zb ↦ zb + std·r̂0(0, zb, t)."""

    def __init__(self, net: nn.Module, residual_std: float, train_timesteps: int):
        super().__init__()
        self.net, self.std = net, residual_std
        self.t = (train_timesteps - 1) / train_timesteps

    def forward(self, zb: Tensor) -> Tensor:
        t = torch.full((zb.shape[0],), self.t, dtype=zb.dtype)
        return zb + self.std * self.net(torch.zeros_like(zb), zb, t)


def _to_bytes(module: nn.Module, example: Tensor, name_in: str, name_out: str,
              metadata: dict[str, str] | None = None) -> bytes:
    import onnx

    module = module.float().eval().to(memory_format=torch.contiguous_format)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, (example.contiguous(),), buf, input_names=[name_in],
                          output_names=[name_out], opset_version=OPSET, dynamo=False,
                          dynamic_axes={name_in: {0: "n", 2: "h", 3: "w"},
                                        name_out: {0: "n", 2: "h", 3: "w"}})
    model = onnx.load_from_string(buf.getvalue())
    _halve_exact_initializers(model)
    for k, v in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _halve_exact_initializers(model: Any) -> None:
    """Store each float32 initializer that float16 holds exactly as float16 + a Cast."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(init)
        h = a.astype(np.float16)
        if a.size < 16 or not np.array_equal(h.astype(np.float32), a):
            continue
        name = init.name
        half = numpy_helper.from_array(h, name + "_f16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT))
    for node in reversed(casts):
        graph.node.insert(0, node)


def export_space(space: TAEF2Space) -> dict[str, bytes]:
    """TAEF2's four parts: ``encoder_trunk`` (local, full resolution, [0, 1] pixels in),
    ``encoder_head`` (stride 8), ``decoder_head`` (stride 8), ``decoder_tail`` (local, to
    [0, 1] pixels)."""
    enc, dec = space.encoder, space.decoder
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        trunk_out = enc[:_ENCODER_LOCAL](x)
        z = torch.randn(1, 32, 8, 8)
        head_out = dec[:_DECODER_LOCAL](z)
    return {"encoder_trunk": _to_bytes(enc[:_ENCODER_LOCAL], x, "x", "y"),
            "encoder_head": _to_bytes(enc[_ENCODER_LOCAL:], trunk_out, "x", "y"),
            "decoder_head": _to_bytes(dec[:_DECODER_LOCAL], z, "x", "y"),
            "decoder_tail": _to_bytes(dec[_DECODER_LOCAL:], head_out, "x", "y")}


def export_refiner(codec: Any) -> bytes:
    """A latent :class:`~cdc.refine.codec.RefineCodec`'s standard step; in the graph's
    metadata its config, weights digest, the weights file's ``meta`` (training facts,
    recommended tiers) and the space's component digests."""
    cfg = codec.config
    if cfg.space != "taef2":
        raise ValueError(f"{codec.model_id}: only TAEF2-latent refine models export to ONNX "
                         f"(space {cfg.space!r})")
    step = _StandardStep(codec.net, cfg.residual_std, cfg.train_timesteps)
    meta = {"config": cfg.to_dict(), "model_id": codec.model_id, "meta": dict(codec.meta),
            "weights_sha256": codec.weights_sha256, "path": [1, 0.0, 0],
            "space": {**codec.space.spec(), "components": codec.space.components()}}
    return _to_bytes(step, torch.randn(1, 32, 8, 8), "zb", "z",
                     {META_KEY: json.dumps(meta, sort_keys=True)})


def export_graphs(codec: Any) -> tuple[bytes, dict[str, bytes], dict[str, str]]:
    """The registry's ``onnx_export`` hook: the refiner graph, TAEF2's four graphs and the
    digests of the TAEF2 files they come from."""
    model = export_refiner(codec)  # refuses a pixel-space model first
    return model, export_space(codec.space), codec.space.components()
