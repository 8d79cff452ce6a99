"""RefineCodec: an AVIF base layer, refined by a conditional diffusion decoder within a
per-tile fidelity bound the encoder chooses (see :mod:`cdc.refine`).

Encode: search the AVIF quality (and, below its lowest full-size rate, a downscale) that
meets the rate target; decode the base; run the refiner along each decode path the
archive's tiers use (``standard``: 1 deterministic step; ``high``: a few steps from
γ-scaled noise); per tile keep the largest blend weight within the path's PSNR bound;
write ``B`` (the AVIF) then ``W`` (the weights). Decode: the base alone (``steps=0``, the
``preview`` tier, also from a prefix holding only ``B``), or base + the refiner's output
blended by the stored weights. A request for a path the stream does not store uses, per
tile, the smallest weight any stored path chose (never more refinement than the encoder
allowed anywhere).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from cdc.base import BaseCodec
from cdc.bitstream import symbols_crc
from cdc.diffusion import DDIMSampler
from cdc.diffusion.schedules import NoiseSchedule
from cdc.errors import DecodeSettingsError, WeightsError
from cdc.image import array_to_tensor, tensor_to_image
from cdc.interface import DecodeSettings, ImageLike
from cdc.refine import base_layer, blend, fidelity_search
from cdc.refine.config import DEFAULT_PATHS, RefineConfig
from cdc.refine.config import decode_defaults as _decode_defaults
from cdc.refine.config import recommended_tiers as _recommended_tiers
from cdc.refine.degrid import remove_grid
from cdc.refine.fidelity_search import MAX_PSNR, MIN_PSNR
from cdc.refine.memory import alloc_bytes
from cdc.refine.nets import RefineDenoiser, build_net
from cdc.refine.stream import BARE, BASE_TAG, PLAN_READ_BYTES, WEIGHTS_TAG, Parsed, parse
from cdc.refine.stream import base_prefix_length as _base_prefix_length
from cdc.spaces import Space, build_space

log = logging.getLogger(__name__)
Path = tuple[int, float, int]  # (steps, γ, seed)

#: Rate the encoder aims at when none is set (bits per pixel of the original).
DEFAULT_RATE = 0.15
ETA_SEED = 1_000_003  # η > 0: the step noise's generator is seeded apart from the start's


class RefineCodec(BaseCodec):
    """AVIF base layer + conditional diffusion refinement with a per-tile PSNR bound."""

    codec_id = "refine"
    progressive = True  # a prefix holding the base layer decodes (the preview tier)
    plan_read_bytes = PLAN_READ_BYTES
    rate_controlled = True  # the encoder meets any target rate (``with_rate``)
    min_steps = 0  # steps = 0: the base layer alone

    def __init__(self, net: RefineDenoiser, model_id: str, weights_sha256: str,
                 device: str | torch.device = "cpu", precision: str | None = None,
                 meta: dict[str, Any] | None = None, space: Space | None = None):
        super().__init__(model_id, weights_sha256, device, precision, meta)
        self.net = net.to(self.device).eval()
        cfg = net.cfg
        if (space.name if space is not None else "pixel") != cfg.space:
            raise WeightsError(f"{model_id}: a {cfg.space}-space refiner needs the "
                               f"{cfg.space} space, got {getattr(space, 'name', 'none')}")
        self.space = space.to(self.device) if space is not None else None
        self._last_condition: tuple[bytes, Tensor] | None = None
        self.sampler = DDIMSampler(NoiseSchedule(cfg.schedule, cfg.train_timesteps), "x0")
        self.rate: float | None = float(self.meta.get("default_rate", DEFAULT_RATE))
        self.quality: int | None = None
        self.psnr: float | None = None
        tiers = self.recommended_tiers() or {}
        paths = [(int(t["steps"]), round(float(t.get("gamma", 0.0)), 2),
                  int(t.get("seed", 0)) if t.get("gamma") else 0)
                 for t in tiers.values() if int(t.get("steps", 0)) > 0]
        self.paths: list[Path] = []
        self.set_paths(list(dict.fromkeys(paths)) or list(DEFAULT_PATHS))

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_weights(cls, obj: dict[str, Any], sha256: str, source: str,
                     device: str | torch.device = "cpu", precision: str | None = None,
                     components: dict[str, dict[str, Tensor]] | None = None) -> RefineCodec:
        if obj.get("codec") != "refine":
            raise WeightsError(f"{source}: weights are for codec {obj.get('codec')!r}, "
                               "not refine")
        try:
            cfg = RefineConfig.from_dict(obj["config"])
            net = build_net(cfg)
            sd = {k: v.float() if v.is_floating_point() else v
                  for k, v in obj["state_dict"].items()}
            net.load_state_dict(sd)
            space = None
            if cfg.space != "pixel":
                spec = dict(obj.get("space") or {})
                if spec.get("name") != cfg.space:
                    raise ValueError(f"the file names space {spec.get('name')!r}, "
                                     f"the config {cfg.space!r}")
                space = build_space(spec, components)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise WeightsError(f"{source}: bad refine weights ({e})") from e
        return cls(net, str(obj.get("model_id", cfg.name)), sha256, device, precision,
                   obj.get("meta"), space)

    @property
    def config(self) -> RefineConfig:
        return self.net.cfg

    def decode_defaults(self) -> dict[str, Any]:
        return _decode_defaults(self.config)

    def recommended_tiers(self) -> dict[str, dict[str, Any]] | None:
        return _recommended_tiers(self.meta)

    # -- encoder settings -------------------------------------------------------------------
    def with_rate(self, bpp: float | None = None, quality: int | None = None,
                  psnr: float | None = None) -> RefineCodec:
        """Aim at ``bpp`` bits per pixel (searching the base quality per image), code the
        base at a fixed AVIF ``quality`` (full size), or give each image the fewest bytes
        whose base reaches ``psnr`` dB (:mod:`cdc.refine.fidelity_search`; ``bpp`` is then
        a cap); returns the codec."""
        if bpp is not None and not (math.isfinite(bpp) and bpp > 0):
            raise ValueError(f"rate must be a positive number of bits per pixel, got {bpp}")
        if quality is not None and not 0 <= quality <= 100:
            raise ValueError(f"quality must be in 0..100, got {quality}")
        if psnr is not None and not (math.isfinite(psnr) and MIN_PSNR <= psnr <= MAX_PSNR):
            raise ValueError(f"a PSNR target must be in {MIN_PSNR:g}..{MAX_PSNR:g} dB, "
                             f"got {psnr}")
        if quality is not None and psnr is not None:
            raise ValueError("give a quality or a PSNR target, not both")
        self.quality = quality
        self.psnr = psnr
        if quality is not None:
            self.rate = None
        elif psnr is not None:
            self.rate = bpp  # a cap, or none
        else:
            self.rate = bpp or DEFAULT_RATE
        return self

    def set_paths(self, paths: Sequence[Path | DecodeSettings]) -> RefineCodec:
        """The decode paths (steps ≥ 1, γ, seed) whose blend weights streams carry."""
        out: list[Path] = []
        for p in paths:
            if isinstance(p, DecodeSettings):
                p = (p.steps, p.gamma, p.seed)
            steps, gamma, seed = p
            steps = self.config.default_steps if steps is None else int(steps)
            gamma = round(float(self.config.default_gamma if gamma is None else gamma), 2)
            if steps == 0:
                continue  # the base layer alone needs no weights
            self.sampler.timesteps(steps)  # validates
            key = (steps, gamma, int(seed) if gamma else 0)
            if key not in out:
                out.append(key)
        self.paths = out or list(DEFAULT_PATHS)  # tiers with no refining path: the defaults
        return self

    def prepare_paths(self, settings: Sequence[DecodeSettings]) -> None:
        """Encode weights for each decode setting (an archive's tiers); none: the defaults."""
        self.set_paths(list(settings))

    def decode_paths(self) -> list[Path]:
        return list(self.paths)

    # -- shared by both ends ----------------------------------------------------------------
    @torch.no_grad()
    def condition(self, base: Tensor) -> Tensor:
        """What the denoiser is conditioned on: the base itself (pixel space), or its TAEF2
        latent (the base replicate-padded to a multiple of 8). The last latent is kept,
        keyed by the base's bytes: the encoder's paths and a decode of several tiers of
        one stream encode the same base once."""
        base = base.to(self.device)
        if self.space is None:
            return base
        key = hashlib.sha1(base.detach().cpu().contiguous().numpy().tobytes()).digest()
        if self._last_condition is not None and self._last_condition[0] == key:
            return self._last_condition[1]
        h, w = base.shape[-2:]
        m = self.space.stride
        padded = torch.nn.functional.pad(base, (0, -w % m, 0, -h % m), mode="replicate")
        with self.autocast():
            cond = self.space.encode(padded).float()
        self._last_condition = (key, cond)
        return cond

    def forget_condition(self) -> None:
        """Drop the kept base latent (benchmarks time a cold decode)."""
        self._last_condition = None

    @torch.no_grad()
    def refine(self, base: Tensor, steps: int, gamma: float, seed: int,
               cond: Tensor | None = None, eta: float = 0.0) -> Tensor:
        """The refiner's output for a (1, 3, H, W) base in [-1, 1] along one decode path
        (``cond``: :meth:`condition` of ``base``, when the caller has it already; ``eta``:
        DDIM's η, 0 on every path a stream stores — η > 0 is measured by benches only)."""
        cfg = self.config
        out = self.refined_latent(base, steps, gamma, seed, cond, eta)
        if self.space is not None:
            h, w = base.shape[-2:]
            with self.autocast():
                out = self.space.decode(out).float()[..., :h, :w]
            if cfg.degrid_window:
                out = remove_grid(out, base.to(out.device), self.space.stride,
                                  cfg.degrid_window)
        return out.clamp(-1, 1).cpu()

    @torch.no_grad()
    def refined_latent(self, base: Tensor, steps: int, gamma: float, seed: int,
                       cond: Tensor | None = None, eta: float = 0.0) -> Tensor:
        """The denoiser's estimate of the original in its own space (the TAEF2 latent, or
        pixels), before any decode, grid filter or clamp: :meth:`refine` decodes it, and a
        bench can code against it. η > 0 draws its step noise from ``seed`` + ETA_SEED, a
        generator apart from the start's."""
        cond = self.condition(base) if cond is None else cond
        x_n = self.sampler.initial_noise(tuple(cond.shape), gamma, seed, self.device)

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            with self.autocast():
                return self.net.tiled(x_t, cond, t).float()

        generator = torch.Generator().manual_seed(int(seed) + ETA_SEED) if eta else None
        r0 = self.sampler.sample(denoise, x_n, steps, clip=False, eta=eta, generator=generator)
        return cond + self.config.residual_std * r0

    def _alloc_bytes(self, h: int, w: int) -> int:
        """Estimated peak bytes of a decode (:func:`cdc.refine.memory.alloc_bytes`)."""
        return alloc_bytes(self.config, h, w, None if self.space is None else self.space.tile)

    # -- encoding ---------------------------------------------------------------------------
    def _overhead(self, h: int, w: int) -> int:
        th, tw = blend.grid(h, w, self.config.tile)
        per_path = 10 + math.ceil(th * tw * self.config.weight_bits / 8)
        return 40 + 6 + len(self.paths) * per_path

    def compress_batch(self, images: list[ImageLike]) -> list[bytes]:
        return [self.compress_with_reconstructions([im])[0][0] for im in images]

    @torch.no_grad()
    def compress_with_reconstructions(self, images: list[ImageLike]
                                      ) -> list[tuple[bytes, dict[Path, Tensor]]]:
        """Encode; also return each image's decode per path (and ``(0, 0.0, 0)``: the base),
        as (3, H, W) tensors in [-1, 1] exactly as the decoder rebuilds them."""
        cfg = self.config
        out = []
        for p in self.prepare(images):
            h, w = p.height, p.width
            if self.quality is not None:
                choice = base_layer.encode(p.array, self.quality, 1, cfg)
            elif self.psnr is not None:
                cap = None if self.rate is None else max(
                    1, int(self.rate * h * w / 8) - self._overhead(h, w))
                choice = fidelity_search.search(p.array, self.psnr, cfg, cap).choice
            else:
                target = max(1, int(self.rate * h * w / 8) - self._overhead(h, w))
                choice = base_layer.search(p.array, target, cfg)
            base = base_layer.decode_choice(choice, h, w)
            x = array_to_tensor(p.array)
            recons: dict[Path, Tensor] = {(0, 0.0, 0): base[0]}
            records = []
            cond = self.condition(base)
            for steps, gamma, seed in self.paths:
                refined = self.refine(base, steps, gamma, seed, cond)
                bound = cfg.bound_for(gamma)
                idx, shown = blend.bounded(x, base, refined, cfg.table, cfg.tile, bound)
                recons[(steps, gamma, seed)] = shown[0]
                records.append(blend.BlendPath(steps, gamma, seed, bound,
                                               tuple(int(v) for v in idx.flatten())))
            b = bytes([choice.scale, choice.quality | (BARE if choice.bare else 0)]) + choice.data
            data = self.container(p, {BASE_TAG: b, WEIGHTS_TAG: blend.pack(records,
                                                                          cfg.weight_bits)},
                                  symbols_crc(b))
            out.append((data, recons))
        return out

    # -- decoding ---------------------------------------------------------------------------
    def parse(self, data: bytes) -> tuple[Parsed, list[blend.BlendPath]]:
        """Everything a stream claims, checked before any decoding work."""
        p = parse(data)
        if p.digest != self.digest:
            from cdc.errors import ModelMismatchError

            raise ModelMismatchError(
                f"stream was encoded with weights {p.digest.hex()}, but the loaded model "
                f"{self.model_id} has {self.digest.hex()}: decode with the same weights")
        th, tw = blend.grid(p.height, p.width, self.config.tile)
        paths = [] if p.weights is None else blend.unpack(
            p.weights, self.config.weight_bits, th * tw, self.config.train_timesteps)
        return p, paths

    def _weights_for(self, p: Parsed, paths: list[blend.BlendPath], steps: int, gamma: float,
                     seed: int) -> Tensor:
        key = (steps, round(gamma, 2), seed if gamma else 0)
        chosen = [q for q in paths if q.key == key]
        th, tw = blend.grid(p.height, p.width, self.config.tile)
        if chosen:
            idx = torch.tensor(chosen[0].indices).view(1, th, tw)
        else:  # a path the encoder did not run: never more refinement than any path allows
            idx = torch.tensor([q.indices for q in paths]).min(dim=0).values.view(1, th, tw)
            log.info("decode path %s not in the stream: using the smallest stored weights",
                     key)
        return blend.weight_map(idx, self.config.table, self.config.tile, p.height, p.width)

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None, seeds: list[int] | int = 0
                         ) -> list[Image.Image]:
        cfg = self.config
        seeds = [seeds] * len(datas) if isinstance(seeds, int) else list(seeds)
        if len(seeds) != len(datas):
            raise DecodeSettingsError(f"{len(seeds)} seeds for {len(datas)} streams")
        steps = cfg.default_steps if steps is None else int(steps)
        gamma = cfg.default_gamma if gamma is None else float(gamma)
        if steps < 0 or gamma < 0:
            raise DecodeSettingsError(f"steps and gamma must be >= 0, got {steps}, {gamma}")
        if steps:
            try:
                self.sampler.timesteps(steps)
            except ValueError as e:
                raise DecodeSettingsError(str(e)) from None
        parsed = [self.parse(d) for d in datas]  # every stream checked before any work
        for p, paths in parsed:
            what = f"a {p.width}x{p.height} refine stream"
            self.budget.check(what, pixels=p.width * p.height, steps=steps,
                              pixel_steps=p.width * p.height * steps,
                              alloc_bytes=self._alloc_bytes(p.height, p.width))
            if steps and not paths:
                raise DecodeSettingsError(
                    "this prefix holds only the base layer: decode it with steps=0 (preview)")
        out = []
        for (p, paths), seed in zip(parsed, seeds):
            base = base_layer.decode(p.avif, p.height, p.width, p.scale, p.bare)
            if steps:
                refined = self.refine(base, steps, gamma, seed)
                base = blend.apply(base, refined, self._weights_for(p, paths, steps, gamma, seed))
            out.append(tensor_to_image(base[0]))
        return out

    def prefix_length(self, head: bytes, steps: int | None = None,
                      bpp: float | None = None) -> int:
        """The base-layer prefix (header + section B): the one prefix a refine stream decodes
        from (``steps=0``, the preview tier), whatever ``steps`` and ``bpp`` say."""
        end = _base_prefix_length(head[:PLAN_READ_BYTES])
        return end

    def info(self, data: bytes) -> dict[str, Any]:
        from cdc.refine.stream import info

        return info(data, self.digest)
