"""DiffCCodec: progressive image streams with an unconditional diffusion model.

The encoder walks the reverse diffusion from x_{t_0} (t_0 = N−1, drawn from the
stream seed: no bits) through the coded levels t_1 > … > t_K. At each step it
reverse-channel codes a sample of the posterior q(x_s | x_t, x_0) against the
model's p(x_s | x_t) (:mod:`cdc.diffc.rcc`), so after step j the decoder holds
exactly the encoder's x_{t_j}. Any prefix of the stream therefore decodes: the
decoder rebuilds x at the last fully received level and runs DDIM from there to
x̂_0 (``gamma`` = DDIM η: 0 = probability-flow ODE, 1 = ancestral sampling;
``steps`` network calls). See docs/diffc.md.

The coded tensor is the prior's space in model units: pixels, or a frozen autoencoder's
latent (TAEF2: stride 8, 32 channels), where the image enters by the space's encoder and
every decoded x̂_0 leaves by its decoder. Only the latent positions that cover the image
are coded; the padding follows the model's mean (no bits).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from PIL import Image

from cdc.base import BaseCodec
from cdc.bitstream import flags_for
from cdc.diffc import philox, rcc
from cdc.diffc import stream as st
from cdc.diffc.model import CANDIDATE_SCHEMES, DiffCConfig, DiffusionPrior, prior_from_dict
from cdc.errors import CorruptStreamError, DecodeSettingsError, ModelMismatchError
from cdc.image import (
    array_to_tensor,
    first_frame_only,
    pad_to_multiple,
    tensor_to_image,
    to_rgb_array,
)
from cdc.interface import ImageLike
from cdc.limits import rcc_block_bytes

_LN2 = math.log(2.0)

#: Peak bytes per chosen-candidate normal of a scheme-1 decode (Philox words, their
#: temporaries — up to 2 blocks for a 1-word candidate —, the float transform), rounded up.
_PHILOX_BYTES_PER_NORMAL = 256

#: Bytes a reader should fetch first to be sure to hold the plan (header + 20-step plan ≈ 160).
PLAN_READ_BYTES = 1024


class DiffCCodec(BaseCodec):
    """DiffC with real reverse-channel coding and prefix-decodable streams."""

    codec_id = "diffc"
    #: Streams decode from any prefix; readers may range-read only ``prefix_length`` bytes.
    progressive = True
    plan_read_bytes = PLAN_READ_BYTES

    def __init__(self, prior: DiffusionPrior, model_id: str, weights_sha256: str,
                 device: str | torch.device = "cpu", precision: str | None = None,
                 meta: dict[str, Any] | None = None):
        super().__init__(model_id, weights_sha256, device, precision, meta)
        self.prior = prior.to(self.device).eval()

    @classmethod
    def from_weights(cls, obj: dict[str, Any], sha256: str, source: str,
                     device: str | torch.device = "cpu", precision: str | None = None,
                     components: dict[str, dict[str, torch.Tensor]] | None = None) -> DiffCCodec:
        """From a validated weights dict (``zoo.load_codec`` dispatches here)."""
        prior, model_id = prior_from_dict(obj, source, components)
        return cls(prior, model_id, sha256, device, precision, obj.get("meta"))

    @property
    def config(self) -> DiffCConfig:
        return self.prior.cfg

    def with_encode_defaults(self, **defaults: Any) -> DiffCCodec:
        """Coding defaults (``candidates``, ``chunk_kl_bits``, …) the encoder uses from now
        on; every stream's plan says what it used, so decoders are unaffected."""
        coding = {"code_steps", "logsnr_first", "t_min", "chunk_kl_bits", "chunk_index_bits",
                  "max_index_bits", "index_coding", "candidates"}
        unknown = sorted(set(defaults) - coding)
        if unknown:
            raise ValueError(f"diffc codec has no encoder defaults {unknown}")
        self.prior.cfg = dataclasses.replace(self.prior.cfg, **defaults)  # validated again
        return self

    # -- shared by both directions ------------------------------------------------------
    def _x0_hat(self, x: torch.Tensor, t: int) -> torch.Tensor:
        with self.autocast():
            return self.prior.x0_hat(x, t)[0]

    def _prepare(self, h: int, w: int) -> tuple[tuple[int, ...], torch.Tensor]:
        """(shape of the coded tensor, flat indices of the dims that cover the image)."""
        cfg = self.config
        m, s = cfg.pad_multiple, cfg.space_stride
        ph, pw = h + (-h) % m, w + (-w) % m
        shape = (1, cfg.space_channels, ph // s, pw // s)
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[..., : -(-h // s), : -(-w // s)] = True
        return shape, mask.reshape(-1).nonzero().squeeze(1)

    def coded_dims(self, h: int, w: int) -> int:
        """Dimensions an h×w image's stream codes (3·h·w for pixels)."""
        s = self.config.space_stride
        return self.config.space_channels * -(-h // s) * -(-w // s)

    def _to_image(self, u: torch.Tensor, h: int, w: int) -> Image.Image:
        """Model units → the h×w image (through the space's decoder)."""
        return tensor_to_image(self.prior.decode_space(u)[0, :, :h, :w])

    def _start(self, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(rcc.derive_seed(seed, 0))
        return torch.randn(shape, generator=g).to(self.device)

    # -- encoding -------------------------------------------------------------------------
    def compress(self, image: ImageLike, **kw: Any) -> bytes:
        return self.compress_batch([image], **kw)[0]

    def compress_batch(self, images: list[ImageLike], **kw: Any) -> list[bytes]:
        """Encode each image (one at a time: the decoder repeats its exact computation)."""
        return [self.encode(img, **kw)[0] for img in images]

    @torch.no_grad()
    def encode(self, image: ImageLike, code_steps: int | None = None, t_min: int | None = None,
               chunk_kl_bits: float | None = None, chunk_index_bits: int | None = None,
               index_coding: str | None = None, candidates: str | None = None
               ) -> tuple[bytes, dict[str, Any]]:
        """(stream, report): report has per-step KL (bits), bytes and the coded x_t.

        The keyword arguments override the model's coding defaults; whatever is used
        goes into the stream's plan, so any decoder with the same weights reads it.
        ``candidates``: "philox" (scheme 1: decoders compute only the chosen candidates)
        or "mt19937" (scheme 0, what models saved before scheme 1 write by default).
        """
        cfg = self.config
        coding = {"fixed": st.CODING_FIXED, "zipf": st.CODING_ZIPF}[
            cfg.index_coding if index_coding is None else index_coding]
        scheme = cfg.candidates if candidates is None else candidates
        if scheme not in CANDIDATE_SCHEMES:
            raise ValueError(f"unknown candidate scheme {scheme!r}; "
                             f"known: {sorted(CANDIDATE_SCHEMES)}")
        layout = CANDIDATE_SCHEMES[scheme]
        chunk_kl = cfg.chunk_kl_bits if chunk_kl_bits is None else float(chunk_kl_bits)
        k0 = cfg.chunk_index_bits if chunk_index_bits is None else int(chunk_index_bits)
        arr, mode = to_rgb_array(image)
        h, w = arr.shape[:2]
        x0, _ = pad_to_multiple(array_to_tensor(arr), cfg.pad_multiple)
        x0 = self.prior.encode_space(x0.to(self.device))
        shape, dims = self._prepare(h, w)
        seed = st.crc32(arr.tobytes() + bytes([h & 255, w & 255]))
        t = cfg.train_timesteps - 1
        x = self._start(shape, seed)
        steps, payloads, kls, xs = [], [], [], []
        for j, s in enumerate(self.prior.code_times(code_steps, t_min)):
            x0h = self._x0_hat(x, t)
            c0, ct, sigma = self.prior.posterior_coeffs(t, s)
            mu_p = c0 * x0h + ct * x
            delta = (c0 * (x0 - x0h) / sigma).reshape(-1).cpu()[dims]
            kl_bits = float((delta.double() ** 2).sum()) / 2 / _LN2
            max_k = max(k0, cfg.max_index_bits)
            if coding == st.CODING_ZIPF:
                max_k = min(max_k, st.MAX_ZIPF_BITS)
            n_chunks, k = rcc.choose_layout(kl_bits, dims.numel(), chunk_kl, min(k0, max_k), max_k)
            step_seed = rcc.derive_seed(seed, j + 1)
            if n_chunks:
                idx, eps = rcc.encode(delta, n_chunks, k, step_seed, device=self.device,
                                      layout=layout)
            else:
                idx = torch.zeros(0, dtype=torch.long)
                eps = rcc.prior_noise(dims.numel(), step_seed)
            x = self._step(mu_p, sigma, eps, dims)
            steps.append(st.Step(s, n_chunks, k))
            payloads.append(rcc.code_indices(idx, k, coding))
            kls.append(kl_bits)
            xs.append(x.cpu())
            t = s
        plan = st.Plan(seed=seed, t_start=cfg.train_timesteps - 1, steps=steps, coding=coding,
                       layout=layout)
        data = st.pack(self.digest, h, w, flags_for(mode, first_frame=first_frame_only(image)),
                       plan, payloads)
        return data, {"kl_bits": kls, "step_bytes": [len(p) for p in payloads],
                      "levels": [s.t for s in steps], "x": xs}

    def _step(self, mu_p: torch.Tensor, sigma: float, eps: torch.Tensor,
              dims: torch.Tensor) -> torch.Tensor:
        """x_s = μ_p + σ·ε on the coded dims; the padding follows μ_p (no bits)."""
        noise = torch.zeros(mu_p.numel())
        noise[dims] = eps
        return mu_p + sigma * noise.view(mu_p.shape).to(mu_p.device)

    # -- decoding -------------------------------------------------------------------------
    def _parse(self, data: bytes, max_bytes: int | None) -> st.Parsed:
        if max_bytes is not None:
            if max_bytes < 0:
                raise DecodeSettingsError(f"max_bytes must be >= 0, got {max_bytes}")
            data = bytes(data[:max_bytes])
        p = st.parse(data)
        if p.digest != self.digest:
            raise ModelMismatchError(
                f"stream was encoded with weights {p.digest.hex()}, but the loaded model "
                f"{self.model_id} has {self.digest.hex()}: decode with the same weights")
        n = self.config.train_timesteps
        if p.plan.t_start != n - 1 or any(s.t >= n for s in p.plan.steps):
            raise CorruptStreamError("coding plan levels do not fit this model's schedule")
        return p

    def check_budget(self, p: st.Parsed, steps: int | None = None) -> None:
        """Refuse (``ResourceLimitError``) a stream whose decode would exceed ``self.budget``,
        from its header and plan alone: padded pixels, network evaluations (the received
        coded steps plus ``steps`` DDIM steps), chunk indices, candidate draws and the
        largest allocation (the U-Net, or one step's candidates). Scheme 1 draws only the
        chosen candidate of each chunk; scheme 0 all 2^k of them."""
        cfg = self.config
        m, stride = cfg.pad_multiple, cfg.space_stride
        ph, pw = p.height + (-p.height) % m, p.width + (-p.width) % m
        n_dims = self.coded_dims(p.height, p.width)
        received = p.plan.steps[: len(p.received)]
        draws, block, symbols = 0, 0, 0
        for j, s in enumerate(received):
            if s.n_chunks > n_dims:
                raise CorruptStreamError(f"step {j}: {s.n_chunks} chunks for {n_dims} dimensions")
            if s.n_chunks:
                d = -(-n_dims // s.n_chunks)
                if p.plan.layout == st.LAYOUT_PHILOX:
                    n = s.n_chunks * philox.padded_dims(d)
                    draws += n
                    block = max(block, n * _PHILOX_BYTES_PER_NORMAL // 2)
                else:
                    draws += s.n_chunks * (1 << s.k) * d
                    block = max(block, rcc_block_bytes(s.n_chunks, s.k, d, rcc.BLOCK_ELEMENTS))
                symbols += s.n_chunks
            else:
                draws += n_dims
        evals = len(received) + (steps or 0)
        latent = 48 * cfg.space_channels * (ph // stride) * (pw // stride) if stride > 1 else 0
        alloc = (max(self.unet_alloc(ph // stride, pw // stride, context=False), 2 * block,
                     self.prior.space.decode_bytes(ph, pw))
                 + 48 * 3 * ph * pw + latent)
        self.budget.check(
            f"a {p.width}x{p.height} diffc stream", pixels=ph * pw, steps=evals,
            pixel_steps=ph * pw * evals, latent_elements=symbols,
            rcc_draws_per_dim=draws // n_dims, rcc_draws=draws, alloc_bytes=alloc)

    def read_indices(self, p: st.Parsed) -> list[torch.Tensor]:
        """Every received step's chunk indices, decoded and range-checked: the whole
        (received) stream is validated before the first network evaluation."""
        out = []
        for j, (s, payload) in enumerate(zip(p.plan.steps, p.received)):
            try:
                rcc.check_indices(payload, s.n_chunks, s.k, p.plan.coding)
                idx = (rcc.decode_indices(payload, s.n_chunks, s.k, p.plan.coding)
                       if s.n_chunks else torch.zeros(0, dtype=torch.long))
            except (CorruptStreamError, ValueError, RuntimeError) as e:
                raise CorruptStreamError(f"step {j}: bad chunk indices ({e})") from e
            if len(idx) != s.n_chunks or (len(idx) and (int(idx.max()) >= 1 << s.k
                                                        or int(idx.min()) < 0)):
                raise CorruptStreamError(f"step {j}: chunk index out of range")
            out.append(idx)
        return out

    @torch.no_grad()
    def decode_levels(self, data: bytes | st.Parsed, max_bytes: int | None = None,
                      ) -> tuple[st.Parsed, int, list[torch.Tensor]]:
        """(parsed, last level, x at each received level): the encoder's samples, exactly.

        Everything the stream (or the prefix read) says is checked before any network
        evaluation: header, plan, CRCs (:func:`stream.parse`), the decode budget, and every
        received step's chunk indices (decoded and range-checked)."""
        p = data if isinstance(data, st.Parsed) else self._parse(data, max_bytes)
        self.check_budget(p)
        indices = self.read_indices(p)
        shape, dims = self._prepare(p.height, p.width)
        t = p.plan.t_start
        x = self._start(shape, p.plan.seed)
        xs = []
        for j, (s, idx) in enumerate(zip(p.plan.steps, indices)):
            step_seed = rcc.derive_seed(p.plan.seed, j + 1)
            x0h = self._x0_hat(x, t)
            c0, ct, sigma = self.prior.posterior_coeffs(t, s.t)
            mu_p = c0 * x0h + ct * x
            if s.n_chunks:
                eps = rcc.decode(idx, dims.numel(), s.n_chunks, s.k, step_seed,
                                 layout=p.plan.layout)
            else:
                eps = rcc.prior_noise(dims.numel(), step_seed)
            x = self._step(mu_p, sigma, eps, dims)
            xs.append(x.cpu())
            t = s.t
        return p, t, xs

    def decompress(self, data: bytes, steps: int | None = None, gamma: float | None = None,
                   seed: int = 0, max_bytes: int | None = None) -> Image.Image:
        """Rebuild the image from a stream or any prefix of it (``max_bytes`` cuts one).

        ``steps``: DDIM network calls from the last received level to x̂_0 (1 = the
        denoised estimate directly); ``gamma``: DDIM η (0 = probability flow,
        1 = ancestral; only η > 0 uses ``seed``).
        """
        cfg = self.config
        steps = cfg.default_steps if steps is None else int(steps)
        gamma = cfg.default_gamma if gamma is None else float(gamma)
        if steps < 1:
            raise DecodeSettingsError(f"steps must be >= 1, got {steps}")
        if gamma < 0:
            raise DecodeSettingsError(f"gamma must be >= 0, got {gamma}")
        p = self._parse(data, max_bytes)
        self.check_budget(p, steps)
        p, t, xs = self.decode_levels(p)
        x = xs[-1].to(self.device) if xs else self._start(self._prepare(p.height, p.width)[0],
                                                          p.plan.seed)
        with self.autocast():
            x0 = self.prior.reconstruct(x, t, steps, eta=gamma, seed=seed)
        return self._to_image(x0, p.height, p.width)

    def decompress_prefix(self, data: bytes, nbytes: int, steps: int | None = None,
                          gamma: float | None = None, seed: int = 0) -> Image.Image:
        """The image from the first ``nbytes`` bytes (what a range read of a preview gets)."""
        return self.decompress(data, steps=steps, gamma=gamma, seed=seed, max_bytes=nbytes)

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None,
                         seeds: list[int] | int = 0) -> list[Image.Image]:
        seeds = [seeds] * len(datas) if isinstance(seeds, int) else list(seeds)
        if len(seeds) != len(datas):
            raise DecodeSettingsError(f"{len(seeds)} seeds for {len(datas)} streams")
        return [self.decompress(d, steps, gamma, s) for d, s in zip(datas, seeds)]

    def step_offsets(self, data: bytes) -> list[int]:
        """Prefix lengths: entry j is the bytes needed to decode with steps 0..j−1."""
        p = st.parse(data)
        return [p.prefix_bytes(j) for j in range(len(p.plan.steps) + 1)]

    def prefix_length(self, head: bytes, steps: int | None = None, bpp: float | None = None
                      ) -> int:
        """See the module function :func:`prefix_length` (``head``: the first
        :data:`PLAN_READ_BYTES` bytes of a stream)."""
        return prefix_length(head, steps=steps, bpp=bpp)


def prefix_length(head: bytes, steps: int | None = None, bpp: float | None = None) -> int:
    """How many leading bytes of a stream to read for a preview (no model needed).

    ``head``: the first bytes of the stream (at least header + plan; ``PLAN_READ_BYTES``
    is plenty for the shipped settings). ``steps``: decode after that many coded steps
    (negative counts from the end); ``bpp``: the most bytes within that budget (bits per
    pixel of the original image; at least the plan). Neither: the whole stream.
    """
    p = st.parse(head)
    offsets = [p.prefix_bytes(j) for j in range(len(p.plan.steps) + 1)]
    offsets[-1] = p.full_length  # the whole stream includes the container's CRC-32
    if steps is not None:
        j = steps if steps >= 0 else len(p.plan.steps) + 1 + steps
        return offsets[min(max(j, 0), len(offsets) - 1)]
    if bpp is not None:
        budget = bpp * p.width * p.height / 8
        return max([o for o in offsets if o <= budget], default=offsets[0])
    return p.full_length


describe = st.describe  # ``cdc info`` (cdc.registry names cdc.diffc.stream:describe)

__all__ = ["PLAN_READ_BYTES", "DiffCCodec", "describe", "prefix_length"]
