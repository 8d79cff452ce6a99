"""CorrDiffCodec: CDC's bitstream plus a few bits per decode path that correct the sampler.

Same interface as :class:`cdc.codec.CDCCodec` (it is a subclass): the content and
hyper latents are coded exactly as CDC codes them (sections ``Z``, ``Y``), with the
same frozen encoder and entropy model; section ``W`` adds, for each *decode path*
(steps, γ, seed) the encoder simulated, the indices of the weights that blend the
diffusion x0 estimate with the end-to-end decoder's output (see
:mod:`cdc.corrdiff.correction`).

Decoding follows a stored path when the request matches it (``steps``/``gamma`` left
at None mean the first stored path; the seed only matters when γ > 0). A request for
other settings (an archive tier with other steps, say) **falls back to plain CDC
decoding** of the same latent with the requested settings: the indices were chosen
for one trajectory and mean nothing on another. :meth:`CorrDiffCodec.decode_plan`
tells which of the two a request gets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from cdc.bitstream import Container, symbols_crc
from cdc.codec import CDCCodec, _symbols_bytes, cdc_model
from cdc.corrdiff.correction import (
    W_TAG,
    CorrectionConfig,
    PathRecord,
    corrected_sample,
    pack_w,
    quantize_gamma,
    region_mse,
    unpack_w,
)
from cdc.corrdiff.decoder import PREFIX as DECODER_PREFIX
from cdc.corrdiff.decoder import DecoderConfig, E2EDecoder
from cdc.errors import DecodeSettingsError, WeightsError
from cdc.image import tensor_to_image
from cdc.interface import DecodeSettings, ImageLike
from cdc.model_config import CDCConfig
from cdc.models import ConditionalDiffusionCompressor
from cdc.weights import FetchWeights, half_state, pack_weights

log = logging.getLogger(__name__)
#: Top-level key of a corrdiff weights file: {"decoder": ..., "correction": ...}; the file's
#: "config" is the base CDC config itself. Files written before 2026-12 kept this section in
#: config["extra"]["corrdiff"] instead, which is still read.
CONFIG_KEY = "corrdiff"

PathLike = DecodeSettings | tuple[int, float, int] | dict[str, Any]


class CorrDiffCodec(CDCCodec):
    """CDC + privileged end-to-end decoder correction (Ma et al., ICML 2024)."""

    codec_id = "corrdiff"

    def __init__(self, model: ConditionalDiffusionCompressor, decoder: E2EDecoder,
                 correction: CorrectionConfig, model_id: str, weights_sha256: str,
                 device: str | torch.device = "cpu", precision: str | None = None,
                 paths: Sequence[PathLike] | None = None, meta: dict[str, Any] | None = None):
        super().__init__(model, model_id, weights_sha256, device, precision, meta)
        self.decoder = decoder.to(self.device).eval()
        self.correction = correction
        self.paths: list[tuple[int, float, int]] = []
        self.set_paths(paths)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_weights(cls, obj: dict[str, Any], sha256: str, source: str,
                     device: str | torch.device = "cpu", precision: str | None = None,
                     components: dict[str, dict[str, Tensor]] | None = None,
                     paths: Sequence[PathLike] | None = None) -> CorrDiffCodec:
        """From a validated weights dict (``zoo.load_codec`` dispatches here)."""
        if obj.get("codec") != "corrdiff":
            raise WeightsError(
                f"{source}: weights are for codec {obj.get('codec')!r}, not corrdiff")
        model, model_id = cdc_model(obj, source, components)
        try:
            own = obj[CONFIG_KEY] if CONFIG_KEY in obj else model.cfg.extra[CONFIG_KEY]
            dcfg = DecoderConfig.from_dict(own.get("decoder", {}))
            corr = CorrectionConfig.from_dict(own.get("correction", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise WeightsError(f"{source}: bad corrdiff config ({e})") from e
        decoder = E2EDecoder(model.cfg, dcfg)
        try:
            decoder.load_prefixed(obj["state_dict"], source)
        except (KeyError, RuntimeError) as e:
            raise WeightsError(f"{source}: end-to-end decoder weights do not fit ({e})") from e
        return cls(model, decoder.eval(), corr, model_id, sha256, device, precision, paths,
                   obj.get("meta"))

    def set_paths(self, paths: Sequence[PathLike] | None) -> CorrDiffCodec:
        """The decode paths (steps, γ, seed) the encoder simulates and stores, first = default.

        Each costs one simulated decode at encode time and ~5 bytes of section W.
        """
        cfg = self.config
        if not paths:
            paths = [(cfg.default_steps, cfg.default_gamma, 0)]
        out = []
        for p in paths:
            if isinstance(p, DecodeSettings):
                p = (p.steps, p.gamma, p.seed)
            elif isinstance(p, dict):
                p = (p.get("steps"), p.get("gamma"), p.get("seed", 0))
            steps, gamma, seed = p
            steps = cfg.default_steps if steps is None else int(steps)
            gamma = quantize_gamma(cfg.default_gamma if gamma is None else float(gamma))
            self.model.sampler.timesteps(steps)  # validates
            out.append((steps, gamma, int(seed)))
        if len(set(out)) != len(out):
            raise ValueError(f"duplicate decode paths: {out}")
        self.paths = out
        return self

    def prepare_paths(self, settings: Sequence[DecodeSettings]) -> None:
        """Encode one corrected path per decode setting (an archive's tiers), first = default."""
        self.set_paths(list(settings))

    def decode_paths(self) -> list[tuple[int, float, int]]:
        return list(self.paths)

    # -- shared by both ends ----------------------------------------------------------------
    @torch.no_grad()
    def e2e(self, y_hat: Tensor) -> Tensor:
        """The end-to-end decoder's estimate of x0 for ŷ in model units (padded size; for
        pixels the image in [-1, 1])."""
        with self.autocast():
            x = self.decoder(y_hat.to(self.device)).float()
        return x.clamp(-1, 1) if self.model.clip else x

    def _space_sizes(self, sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Image sizes → the sizes of the space positions that cover them."""
        s = self.config.space_stride
        return [(-(-h // s), -(-w // s)) for h, w in sizes]

    @torch.no_grad()
    def _run_path(self, y_hat: Tensor, context: list[Tensor], x0_e2e: Tensor, steps: int,
                  gamma: float, seeds: list[int], first: int, count: int,
                  indices: Tensor | None = None, target: Tensor | None = None,
                  sizes: list[tuple[int, int]] | None = None,
                  distance: Any = None) -> tuple[Tensor, Tensor]:
        ys, ch = self.config.y_stride, self.config.space_channels
        sampler = self.model.sampler
        x_n = sampler.initial_noise((y_hat.shape[0], ch, y_hat.shape[-2] * ys,
                                     y_hat.shape[-1] * ys), gamma, seeds, self.device)

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            with self.autocast():
                return self.model.denoiser(x_t, t, context)

        return corrected_sample(sampler, denoise, x_n, steps, x0_e2e, self.correction.table,
                                first, count, indices=indices, target=target, sizes=sizes,
                                clip=self.model.clip, distance=distance)

    def _context(self, y_hat: Tensor) -> list[Tensor]:
        with torch.no_grad(), self.autocast():
            return self.model.context(y_hat)

    # -- encoding ---------------------------------------------------------------------------
    def compress_batch(self, images: list[ImageLike]) -> list[bytes]:
        return [data for data, _ in self.compress_with_reconstructions(images)]

    @torch.no_grad()
    def compress_with_reconstructions(self, images: list[ImageLike]
                                      ) -> list[tuple[bytes, list[Tensor]]]:
        """Encode; also return, per image, the encoder's simulated decode of each path.

        The reconstructions are (3, H, W) tensors in [-1, 1], cropped to the image;
        the decoder reproduces them (tests check that). The weights are chosen by MSE to
        the original in the model's space (pixels, or the encoder's latent of the image),
        or with ``criterion: pixels`` on a latent space by the pixel MSE of each candidate
        after the frozen decoder.
        """
        out: list[Any] = [None] * len(images)
        for preps, res, idx in self.encode_latents(images):
            batch = torch.cat([p.x for p in preps]).to(self.device)
            target = self.model.encode_space(batch.float())
            y_hat = res["y_hat"].to(self.device)
            context = self._context(y_hat)
            x0_e2e = self.e2e(y_hat)
            sizes = [(p.height, p.width) for p in preps]
            distance = None
            if self.correction.criterion == "pixels" and not self.model.clip:
                pixels = batch.float()

                def distance(x0: Tensor, pixels: Tensor = pixels,
                             sizes: list[tuple[int, int]] = sizes) -> Tensor:
                    return region_mse(self.model.decode_space(x0).float(), pixels, sizes)
            records: list[list[PathRecord]] = [[] for _ in idx]
            recons: list[list[Tensor]] = [[] for _ in idx]
            for steps, gamma, seed in self.paths:
                first, count = self.correction.steps_to_correct(steps)
                u, chosen = self._run_path(y_hat, context, x0_e2e, steps, gamma,
                                           [seed] * len(idx), first, count,
                                           target=target, sizes=self._space_sizes(sizes),
                                           distance=distance)
                x = self.model.decode_space(u)
                for j in range(len(idx)):
                    records[j].append(PathRecord(steps, gamma, seed, first,
                                                 [int(v) for v in chosen[j]]))
                    h, w = sizes[j]
                    recons[j].append(x[j, :, :h, :w].cpu())
            y_strings, z_strings = res["strings"]
            for j, i in enumerate(idx):
                data = self.container(preps[j], {"Z": z_strings[j], "Y": y_strings[j],
                                                 W_TAG: pack_w(records[j], self.correction.bits)},
                                      symbols_crc(_symbols_bytes(res["symbols"][j])))
                out[i] = (data, recons[j])
        return out

    # -- decoding ---------------------------------------------------------------------------
    def read_paths(self, data: bytes | Container) -> list[PathRecord]:
        """The decode paths stored in a stream's section W (verified)."""
        c = data if isinstance(data, Container) else Container.unpack(data)
        return unpack_w(c.section(W_TAG), self.correction.bits, self.config.train_timesteps)

    def _plan(self, paths: list[PathRecord], steps: int | None, gamma: float | None,
              seed: int) -> tuple[int, float, PathRecord | None]:
        steps = paths[0].steps if steps is None else int(steps)
        gamma = paths[0].gamma if gamma is None else float(gamma)
        for p in paths:
            if p.matches(steps, gamma, seed):
                return p.steps, p.gamma, p
        return steps, gamma, None

    def decode_plan(self, data: bytes, steps: int | None = None, gamma: float | None = None,
                    seed: int = 0) -> PathRecord | None:
        """The stored path a request follows, or None if it falls back to plain CDC."""
        return self._plan(self.read_paths(data), steps, gamma, seed)[2]

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None, seeds: list[int] | int = 0,
                         correct: bool = True) -> list:
        """Decode many streams; ``correct=False`` forces plain CDC decoding."""
        seeds = [seeds] * len(datas) if isinstance(seeds, int) else list(seeds)
        if len(seeds) != len(datas):
            raise DecodeSettingsError(f"{len(seeds)} seeds for {len(datas)} streams")
        try:
            if steps is not None:
                self.model.sampler.timesteps(int(steps))  # validate before any work
            if gamma is not None and gamma < 0:
                raise ValueError(f"gamma must be >= 0, got {gamma}")
        except ValueError as e:
            raise DecodeSettingsError(str(e)) from None
        plans = []
        for d, seed in zip(datas, seeds):  # parse and check every stream before decoding any
            c = self.unpack(d)
            s, g, rec = self._plan(self.read_paths(c), steps, gamma, seed)
            self.check_budget(c, s)
            plans.append((c, s, g, rec))
        items = []
        for (c, s, g, rec), seed in zip(plans, seeds):
            _, y_hat = self.decode_latent(c)
            if not correct:
                rec = None
            if rec is None:
                log.debug("corrdiff: no stored path for steps=%s gamma=%s seed=%s; plain CDC",
                          s, g, seed)
            items.append((c, y_hat, s, g, seed, rec))
        groups: dict[tuple, list[int]] = {}
        for i, (_, y_hat, s, g, _seed, rec) in enumerate(items):
            key = (tuple(y_hat.shape[-2:]), s, g, None if rec is None else (rec.first, rec.count))
            groups.setdefault(key, []).append(i)
        out: list[Any] = [None] * len(datas)
        for (_shape, s, g, corr), group in groups.items():
            per = self.render_batch_size(items[group[0]][0], s, len(group))
            for start in range(0, len(group), per):
                idx = group[start : start + per]
                y_hat = torch.cat([items[i][1] for i in idx]).to(self.device)
                sd = [items[i][4] for i in idx]
                if corr is None:
                    x = self.model.render(y_hat, steps=s, gamma=g, seed=sd,
                                          autocast_dtype=self.autocast_dtype)
                else:
                    indices = torch.tensor([items[i][5].indices for i in idx], dtype=torch.long)
                    u, _ = self._run_path(y_hat, self._context(y_hat), self.e2e(y_hat), s, g,
                                          sd, corr[0], corr[1],
                                          indices=indices.view(len(idx), corr[1]))
                    x = self.model.decode_space(u)
                for j, i in enumerate(idx):
                    c = items[i][0]
                    out[i] = tensor_to_image(x[j, :, : c.height, : c.width])
        return out

    def extra_alloc(self, ph: int, pw: int, batch: int = 1) -> int:
        """Beside CDC's: the end-to-end decoder's head at the space's resolution."""
        s = self.config.space_stride
        head = 2 * self.decoder.dcfg.head_channels * (ph // s) * (pw // s) * 4 * batch
        return super().extra_alloc(ph, pw, batch) + head

    def decompress_e2e(self, data: bytes):
        """The end-to-end decoder's image alone (no diffusion): the distortion-optimised view."""
        c = self.unpack(data)
        self.check_budget(c, 1)
        c, y_hat = self.decode_latent(c)
        x = self.model.decode_space(self.e2e(y_hat))
        return tensor_to_image(x[0, :, : c.height, : c.width])

    def info(self, data: bytes) -> dict[str, Any]:
        d = super().info(data)
        table = self.correction.table
        d["corrdiff_paths"] = [
            {"steps": p.steps, "gamma": p.gamma, "seed": p.seed,
             "corrected_steps": list(range(p.first, p.first + p.count)),
             "weights": [round(table[k], 4) for k in p.indices]}
            for p in self.read_paths(data)]
        d["corrdiff_weight_bits"] = self.correction.bits
        return d


def corrdiff_section(decoder: DecoderConfig, correction: CorrectionConfig) -> dict[str, Any]:
    """CorrDiff's own part of a weights file (beside the base CDC config, not inside it)."""
    return {"decoder": decoder.to_dict(), "correction": correction.to_dict()}


def base_config_dict(cfg: CDCConfig) -> dict[str, Any]:
    """The CDC config as a weights file stores it, without an old-layout corrdiff section."""
    d = cfg.to_dict()
    d["extra"] = {k: v for k, v in dict(cfg.extra).items() if k != CONFIG_KEY}
    return d


def corrdiff_weights_bytes(model: ConditionalDiffusionCompressor, decoder: E2EDecoder,
                           correction: CorrectionConfig, model_id: str, half: bool = False,
                           meta: dict[str, Any] | None = None,
                           base: tuple[str, str] | None = None) -> bytes:
    """A corrdiff weights file, loadable by ``zoo.load_codec``: the end-to-end decoder under
    ``corrdiff.decoder.`` plus either the base CDC state dict (with its entropy tables) or,
    with ``base=(model_id, sha256)``, only a reference to the base weights file by digest
    (a latent base is ~16 MiB in fp16: embedding it would double every shipped pair)."""
    sd = decoder.prefixed_state_dict()
    extra: dict[str, Any] = {}
    if base is None:
        net = model.network_state_dict()
        if net["entropy.hyper.entropy_bottleneck._quantized_cdf"].numel() == 0:
            raise WeightsError("entropy tables are empty: call model.update() before export")
        sd = {**net, **sd}
    else:
        extra[BASE_KEY] = {"model_id": str(base[0]), "sha256": _check_sha(base[1], "base")}
    if half:
        sd = half_state(sd)
    extra[CONFIG_KEY] = corrdiff_section(decoder.dcfg, correction)
    return pack_weights("corrdiff", model_id, base_config_dict(model.cfg), sd, meta, model.space,
                        **extra)


#: Top-level key of a corrdiff weights file that names its base CDC file instead of embedding it.
BASE_KEY = "base"


def _check_sha(value: Any, what: str) -> str:
    sha = str(value).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise WeightsError(f"{what}: sha256 must be 64 hex digits, got {str(value)[:80]!r}")
    return sha


#: Config fields that only set how a decode runs by default: a corrdiff file may record its
#: own (``cdc export-model --default-steps``) over a base it references.
DECODE_TIME_FIELDS = ("default_steps", "default_gamma")


def _network_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored CDC config without its decode-time defaults: what must match the base."""
    d = base_config_dict(CDCConfig.from_dict(config))
    return {k: v for k, v in d.items() if k not in DECODE_TIME_FIELDS}


def base_reference(obj: dict[str, Any], source: str) -> tuple[str, str] | None:
    """``(model_id, sha256)`` of the base CDC file a corrdiff weights dict names, or None
    when the base is embedded."""
    ref = obj.get(BASE_KEY)
    if ref is None:
        return None
    if not isinstance(ref, dict) or "sha256" not in ref:
        raise WeightsError(f"{source}: bad base reference {str(ref)[:80]!r}")
    return str(ref.get("model_id", "?"))[:200], _check_sha(ref["sha256"], f"{source}: base")


def attach_base(obj: dict[str, Any], base_obj: dict[str, Any], source: str) -> dict[str, Any]:
    """The self-contained weights dict of a corrdiff file that references its base: the
    base's network and space with this file's decoder, config and meta (no I/O: the zoo
    finds the base by digest). Refused unless the base is a CDC file with the same config."""
    if base_obj.get("codec", "cdc") != "cdc":
        raise WeightsError(f"{source}: its base is a {base_obj.get('codec')!r} file, not cdc")
    try:  # compared as configs, so fields added since the base was written do not count
        same = (_network_config(obj["config"]) == _network_config(base_obj["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: bad model config ({e})") from e
    if not same:
        raise WeightsError(f"{source}: the base's model config differs from the one this "
                           "corrdiff file was trained on")
    sd = dict(obj.get("state_dict") or {})
    stray = sorted(k for k in sd if not k.startswith(DECODER_PREFIX))
    if stray:
        raise WeightsError(f"{source}: references its base but also holds {stray[0]!r}")
    merged = {**obj, "state_dict": {**dict(base_obj["state_dict"]), **sd}}
    for key in ("space", "components"):
        if key in base_obj:
            merged[key] = base_obj[key]
        else:
            merged.pop(key, None)
    return merged


def complete_weights(obj: dict[str, Any], source: str, fetch: FetchWeights) -> dict[str, Any]:
    """The registry's ``complete_weights`` hook: a corrdiff file that names its base CDC file
    by digest gets that file's network (``fetch``: the zoo finds and reads it); a file that
    embeds its base is returned as it is."""
    ref = base_reference(obj, source)
    if ref is None:
        return obj
    base_id, sha = ref
    return attach_base(obj, fetch(sha, "cdc", base_id, source), source)


__all__ = ["BASE_KEY", "CONFIG_KEY", "CorrDiffCodec", "attach_base", "base_config_dict",
           "base_reference", "complete_weights", "corrdiff_section", "corrdiff_weights_bytes"]
