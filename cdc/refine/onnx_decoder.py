"""Decode refine streams without torch: numpy, Pillow and onnxruntime.

Why: a `cdc decompress` spends 1.5–2.8 s importing torch before any work, more than the
whole standard-tier decode takes here. This decoder runs the same steps as
:meth:`cdc.refine.codec.RefineCodec.decompress_batch` for the paths it knows — ``preview``
(steps = 0: the base layer alone) and the deterministic 1-step ``standard`` path (γ = 0) of
a TAEF2-latent model — on graphs exported by :mod:`cdc.refine.onnx_export`, and says
:meth:`OnnxRefineDecoder.supports` ``False`` for any other path (the caller then uses the
torch codec). Results equal the torch decoder's up to float rounding (a grey level on a few
pixels), tested. Bytes in, pixels out: loading files is the zoo's job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from cdc.bitstream import DIGEST_BYTES
from cdc.errors import DecodeSettingsError, ModelMismatchError, WeightsError
from cdc.limits import DEFAULT_BUDGET, DecodeBudget
from cdc.refine import onnx_meta
from cdc.refine.base_decode import decode_rgb
from cdc.refine.config import RefineConfig
from cdc.refine.memory import alloc_bytes
from cdc.refine.stream import parse
from cdc.refine.weights_section import BlendPath, grid, unpack
from cdc.taef2_memory import DECODER_MARGIN, ENCODER_MARGIN, STRIDE
from cdc.tiling import tiled

SPACE_PARTS = ("encoder_trunk", "encoder_head", "decoder_head", "decoder_tail")
#: Metadata key of the refiner graph: its config, digest, weights meta and space.
META_KEY = "cdc.refine"

Array = np.ndarray


# -- the numpy twins of the torch decoder's pixel operations ------------------------------
def upsample_bicubic(x: Array, height: int, width: int) -> Array:
    """(C, h, w) float32 → (C, height, width): torch's ``interpolate(mode="bicubic",
    align_corners=False)`` (A = −0.75, indices clamped at the borders), clamped to [−1, 1]."""
    if x.shape[-2:] == (height, width):
        return x

    def matrix(n_out: int, n_in: int) -> Array:
        # Positions and weights in float32, as torch's float kernel: where the ratio is not
        # exact (a fractional downscale) that stays within 3e-6 of torch per axis, 2e-5
        # (0.003 grey levels) in 2-D; float64 would be 1e-5 per axis.
        ratio = np.float32(n_in) / np.float32(n_out)
        src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * ratio - np.float32(0.5)
        x0 = np.floor(src)
        t = src - x0
        a = np.float32(-0.75)
        w = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
             ((a + 2) * t - (a + 3)) * t * t + 1,
             ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
             ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]
        m = np.zeros((n_out, n_in))
        for k in range(4):
            idx = np.clip(x0.astype(int) - 1 + k, 0, n_in - 1)
            np.add.at(m, (np.arange(n_out), idx), w[k])
        return m.astype(np.float32)

    my, mx = matrix(height, x.shape[-2]), matrix(width, x.shape[-1])
    return np.clip(np.einsum("yh,chw,xw->cyx", my, x, mx, optimize=True), -1, 1)


def _box(x: Array, k: int, mode: str = "edge") -> Array:
    """k×k mean over the last two axes, padded (k − 1)//2 before and k//2 after."""
    lo, hi = (k - 1) // 2, k // 2
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(lo, hi), (lo, hi)], mode=mode)
    return _window_mean(p, k)


def _window_mean(p: Array, k: int) -> Array:
    c = np.cumsum(np.cumsum(p, axis=-2, dtype=np.float64), axis=-1)
    c = np.pad(c, [(0, 0)] * (c.ndim - 2) + [(1, 0), (1, 0)])
    s = c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]
    return (s / (k * k)).astype(np.float32)


def _lowpass(x: Array, k: int) -> Array:
    """As :func:`cdc.refine.degrid._lowpass`: edges extended by odd reflection."""
    lo, hi = (k - 1) // 2, k // 2
    if min(x.shape[-2:]) <= hi:
        return _box(x, k)
    pads = [(0, 0)] * (x.ndim - 2) + [(lo, hi), (lo, hi)]
    return _window_mean(2 * np.pad(x, pads, mode="edge") - np.pad(x, pads, mode="reflect"), k)


def periodic_part(d: Array, period: int = 8, window: int = 8) -> Array:
    """:func:`cdc.refine.degrid.periodic_part` of one (H, W) channel."""
    h, w = d.shape
    ph, pw = -h % period, -w % period
    hp = np.pad(d - _lowpass(d, period), ((0, ph), (0, pw)))
    valid = np.pad(np.ones((h, w), np.float32), ((0, ph), (0, pw)))
    hb, wb = hp.shape[0] // period, hp.shape[1] // period

    def by_position(t: Array) -> Array:  # (H, W) → (p², H/p, W/p)
        return t.reshape(hb, period, wb, period).transpose(1, 3, 0, 2).reshape(-1, hb, wb)

    total = _box(by_position(hp), window)
    count = _box(by_position(valid), window)
    seen = count > 0
    local = np.where(seen, total / np.maximum(count, 1e-6), 0).astype(np.float32)
    mean = local.sum(axis=0, keepdims=True) / np.maximum(seen.sum(axis=0, keepdims=True), 1)
    local = np.where(seen, local - mean, local)
    pattern = local.reshape(period, period, hb, wb).transpose(2, 0, 3, 1)
    return pattern.reshape(hb * period, wb * period)[:h, :w]


def remove_grid(refined: Array, base: Array, period: int = 8, window: int = 8) -> Array:
    """:func:`cdc.refine.degrid.remove_grid` on (3, H, W) arrays."""
    return np.stack([r - periodic_part(r - b, period, window) for r, b in zip(refined, base)])


def weight_map(indices: tuple[int, ...], table: tuple[float, ...], tile: int, height: int,
               width: int) -> Array:
    th, tw = grid(height, width, tile)
    w = np.asarray(table, np.float32)[np.asarray(indices).reshape(th, tw)]
    return np.repeat(np.repeat(w, tile, axis=0), tile, axis=1)[:height, :width]


# -- the decoder ----------------------------------------------------------------------------
class OnnxRefineDecoder:
    """The preview and standard paths of one TAEF2-latent refine model, on onnxruntime."""

    def __init__(self, refiner: bytes, space: Mapping[str, bytes], threads: int | None = None):
        try:  # read from the bytes: a preview needs the config, not onnxruntime's sessions
            meta = onnx_meta.metadata(refiner).get(META_KEY)
        except ValueError as e:
            raise WeightsError(f"ONNX refiner graph: not an ONNX model ({e})") from None
        if meta is None:
            raise WeightsError(f"ONNX refiner graph without its {META_KEY!r} metadata")
        try:
            m = json.loads(meta)
            self.config = RefineConfig.from_dict(m["config"])
            self.model_id = str(m["model_id"])
            self.meta: dict[str, Any] = dict(m.get("meta") or {})
            self.weights_sha256 = str(m["weights_sha256"])
            self.space_tile = int(m["space"]["tile"])
            self.space_components = dict(m["space"]["components"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"ONNX refiner graph: bad metadata ({e})") from None
        if self.config.space != "taef2":
            raise WeightsError(f"ONNX refiner graph for space {self.config.space!r}")
        missing = set(SPACE_PARTS) - set(space)
        if missing:
            raise WeightsError(f"ONNX space graphs missing: {sorted(missing)}")
        self._graphs = {"refiner": refiner, **{k: space[k] for k in SPACE_PARTS}}
        self._sessions: dict[str, Any] = {}
        self.threads = threads
        self.digest = bytes.fromhex(self.weights_sha256)[:DIGEST_BYTES]
        self.budget: DecodeBudget = DEFAULT_BUDGET

    def session(self, part: str) -> Any:
        """onnxruntime's session of one graph ("refiner" or a TAEF2 part), built on first use
        (the preview path never imports onnxruntime). :class:`WeightsError` when it cannot
        be built: callers that may (``--engine auto``, the archive readers) decode with torch."""
        sess = self._sessions.get(part)
        if sess is None:
            try:
                import onnxruntime as ort
            except ImportError as e:  # a broken install: the callers fall back to torch
                raise WeightsError(f"ONNX graph {part}: onnxruntime does not import ({e})") \
                    from e
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.threads:
                opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            try:
                sess = ort.InferenceSession(self._graphs[part], opts,
                                            providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
                raise WeightsError(f"ONNX graph {part}: {e}") from e
            self._sessions[part] = sess
        return sess

    def with_budget(self, budget: DecodeBudget | None) -> OnnxRefineDecoder:
        self.budget = budget or DEFAULT_BUDGET
        return self

    def supports(self, steps: int | None, gamma: float | None) -> bool:
        """Whether this decoder computes the path (else use the torch codec)."""
        steps = self.config.default_steps if steps is None else steps
        gamma = self.config.default_gamma if gamma is None else gamma
        return steps == 0 or (steps == 1 and gamma == 0)

    def _run(self, part: str, x: Array) -> Array:
        sess = self.session(part)
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    def refine(self, base: Array) -> Array:
        """The standard path's refined image for a (3, H, W) base in [−1, 1]."""
        cfg = self.config
        h, w = base.shape[-2:]
        padded = np.pad(base, ((0, 0), (0, -h % STRIDE), (0, -w % STRIDE)), mode="edge")
        x01 = ((padded + 1) / 2)[None].astype(np.float32)
        trunk = tiled(lambda t: self._run("encoder_trunk", t), x01, self.space_tile,
                      ENCODER_MARGIN, STRIDE, 1)
        zb = self._run("encoder_head", trunk)
        z = self._run("refiner", zb)
        t = self.space_tile // STRIDE
        img = tiled(lambda u: self._run("decoder_tail", u), self._run("decoder_head", z),
                    t, DECODER_MARGIN, 1, STRIDE)
        out = np.clip(img[0] * 2 - 1, -1, 1)[:, :h, :w]
        if cfg.degrid_window:
            out = remove_grid(out, base, STRIDE, cfg.degrid_window)
        return np.clip(out, -1, 1)

    def decompress(self, data: bytes, steps: int | None = None, gamma: float | None = None
                   ) -> Image.Image:
        """One stream (or its base-layer prefix, for steps = 0) → RGB image."""
        cfg = self.config
        steps = cfg.default_steps if steps is None else int(steps)
        gamma = cfg.default_gamma if gamma is None else float(gamma)
        if not self.supports(steps, gamma):
            raise DecodeSettingsError(f"the ONNX decoder runs steps 0, or 1 at γ 0; not "
                                      f"{steps} at γ {gamma}")
        p = parse(data)
        if p.digest != self.digest:
            raise ModelMismatchError(
                f"stream was encoded with weights {p.digest.hex()}, but the loaded model "
                f"{self.model_id} has {self.digest.hex()}: decode with the same weights")
        th, tw = grid(p.height, p.width, cfg.tile)
        paths: list[BlendPath] = [] if p.weights is None else unpack(
            p.weights, cfg.weight_bits, th * tw, cfg.train_timesteps)
        self.budget.check(f"a {p.width}x{p.height} refine stream", pixels=p.width * p.height,
                          steps=steps, pixel_steps=p.width * p.height * steps,
                          alloc_bytes=alloc_bytes(cfg, p.height, p.width, self.space_tile))
        if steps and not paths:
            raise DecodeSettingsError(
                "this prefix holds only the base layer: decode it with steps=0 (preview)")
        rgb = decode_rgb(p.avif, p.height, p.width, p.scale, p.bare)
        base = upsample_bicubic(rgb.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1,
                                p.height, p.width)
        if steps:
            chosen = [q for q in paths if q.key == (1, 0.0, 0)]
            indices = chosen[0].indices if chosen else tuple(
                np.min([q.indices for q in paths], axis=0))
            wmap = weight_map(indices, cfg.table, cfg.tile, p.height, p.width)
            base = base + wmap * (self.refine(base) - base)
        arr = np.round((np.clip(base, -1, 1) + 1) * 127.5).astype(np.uint8)
        return Image.fromarray(arr.transpose(1, 2, 0), mode="RGB")
