"""CDCCodec: images ↔ self-contained byte streams with a trained CDC model.

Usable without the CLI::

    codec = zoo.load_codec("cdc-small")          # or CDCCodec.from_pretrained("cdc-small")
    data = codec.compress(Image.open("a.png"))
    img = codec.decompress(data, steps=4, gamma=0.8, seed=1)

The same class serves every space (pixels, the frozen TAEF2 latent): the model's config
names its space and all strides derive from it.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from cdc.base import BaseCodec
from cdc.bitstream import Container, symbols_crc
from cdc.describe import describe_container, latent_shapes
from cdc.errors import CorruptStreamError, DecodeSettingsError, SymbolMismatchError
from cdc.image import array_to_tensor, pad_to_multiple, tensor_to_image, to_rgb_array
from cdc.interface import ImageLike
from cdc.model_config import CDCConfig
from cdc.models import ConditionalDiffusionCompressor
from cdc.spaces import build_space


def _symbols_bytes(symbols: torch.Tensor) -> bytes:
    return symbols.to("cpu", torch.int32).contiguous().numpy().astype("<i4").tobytes()


class CDCCodec(BaseCodec):
    """Conditional Diffusion Compression with a real entropy-coded bitstream."""

    codec_id = "cdc"

    def __init__(self, model: ConditionalDiffusionCompressor, model_id: str, weights_sha256: str,
                 device: str | torch.device = "cpu", precision: str | None = None,
                 meta: dict[str, Any] | None = None):
        """The entropy parameters are computed in float64 on the CPU whatever the
        precision, so streams stay decodable across devices and precisions."""
        super().__init__(model_id, weights_sha256, device, precision, meta)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_weights(cls, obj: dict[str, Any], sha256: str, source: str,
                     device: str | torch.device = "cpu", precision: str | None = None,
                     components: dict[str, dict[str, torch.Tensor]] | None = None) -> CDCCodec:
        """From a validated weights dict (``zoo.load_codec`` dispatches here)."""
        model, model_id = cdc_model(obj, source, components)
        return cls(model, model_id, sha256, device, precision, obj.get("meta"))

    @property
    def config(self) -> CDCConfig:
        return self.model.cfg

    def optimize(self, channels_last: bool = False, compile: bool = False) -> CDCCodec:
        """Opt-in speed-ups for the heavy networks (g_a, context decoder, U-Net).

        Neither changes the bitstream: the entropy parameters are always computed
        by the float64 CPU hyper-synthesis. ``compile`` uses torch.compile (slow
        first call per input shape); measure with bench/bench_speed.py.
        """
        nets = [self.model.g_a, self.model.context, self.model.denoiser]
        if channels_last:
            for net in nets:
                net.to(memory_format=torch.channels_last)
        if compile:
            self.model.denoiser = torch.compile(self.model.denoiser, dynamic=False)
            self.model.context = torch.compile(self.model.context, dynamic=False)
        return self

    # -- encoding -------------------------------------------------------------------------
    def encode_latents(
        self, images: list[ImageLike]
    ) -> list[tuple[Any, dict[str, Any], list[int]]]:
        """(prepared inputs, CompressAI result, their indices) per group of equal padded size."""
        prepared = self.prepare(images)
        out = []
        for idx in self.groups([p.x.shape[-2:] for p in prepared]):
            batch = torch.cat([prepared[i].x for i in idx]).to(self.device)
            with self.autocast():
                res = self.model.compress_latent(batch)
            out.append(([prepared[i] for i in idx], res, idx))
        return out

    def compress_batch(self, images: list[ImageLike]) -> list[bytes]:
        """Encode many images; equal padded sizes are stacked into one forward pass."""
        out: list[bytes | None] = [None] * len(images)
        for preps, res, idx in self.encode_latents(images):
            y_strings, z_strings = res["strings"]
            for j, i in enumerate(idx):
                out[i] = self.container(preps[j], {"Z": z_strings[j], "Y": y_strings[j]},
                                        symbols_crc(_symbols_bytes(res["symbols"][j])))
        return out  # type: ignore[return-value]

    # -- decoding -------------------------------------------------------------------------
    def _latent_shapes(self, h: int, w: int) -> dict[str, tuple[int, int]]:
        return latent_shapes(self.config, h, w)

    def check_budget(self, c: Container, steps: int | None = None, batch: int = 1) -> None:
        """Refuse (``ResourceLimitError``) a stream whose decode would exceed ``self.budget``:
        padded pixels and symbols always; with ``steps``, also the network evaluations and
        the estimated peak memory of rendering ``batch`` such images together."""
        cfg = self.config
        m = cfg.pad_multiple
        ph, pw = c.height + (-c.height) % m, c.width + (-c.width) % m
        shapes = latent_shapes(cfg, c.height, c.width)
        (yh, yw), (zh, zw) = shapes["y"], shapes["hyper"]
        n_y, n_z = yh * yw * cfg.latent_channels, zh * zw * cfg.hyper_channels
        hyper_synthesis = 3 * 2 * n_y * 8  # h_s in float64 on the CPU: (scales, means) and more
        need: dict[str, float] = {"pixels": ph * pw, "latent_elements": n_y + n_z,
                                  "alloc_bytes": hyper_synthesis}
        if steps is not None:
            need = {"pixels": ph * pw, "steps": steps, "pixel_steps": ph * pw * steps,
                    "latent_elements": n_y + n_z,
                    "alloc_bytes": max(hyper_synthesis, self.render_alloc(ph, pw, batch))}
        self.budget.check(f"a {c.width}x{c.height} {c.codec} stream", **need)

    def render_alloc(self, ph: int, pw: int, batch: int = 1) -> int:
        """Estimated peak bytes of rendering ``batch`` padded ph×pw images: the larger of
        one U-Net evaluation and the space's decoder (TAEF2's tiles), plus what a render
        holds beside them (:meth:`extra_alloc`)."""
        s = self.config.space_stride
        return (max(self.unet_alloc(ph // s, pw // s, batch),
                    self.model.space.decode_bytes(ph, pw, batch))
                + self.extra_alloc(ph, pw, batch))

    def extra_alloc(self, ph: int, pw: int, batch: int = 1) -> int:
        """Memory beside the U-Net a render holds (the context features, the image)."""
        cfg = self.config
        ctx = sum(cfg.unet_channels * mult * (ph >> i) * (pw >> i)
                  for i, mult in enumerate(cfg.context_mults)) // max(1, cfg.space_stride) ** 2
        return 4 * batch * (ctx + 6 * 3 * ph * pw)

    def render_batch_size(self, c: Container, steps: int, want: int) -> int:
        """How many equal-sized streams fit one render within the memory budget (>= 1)."""
        m = self.config.pad_multiple
        ph, pw = c.height + (-c.height) % m, c.width + (-c.width) % m
        one = self.render_alloc(ph, pw, 1)
        return max(1, min(want, self.budget.max_alloc_bytes // max(1, one)))

    def decode_latent(self, data: bytes | Container) -> tuple[Container, torch.Tensor]:
        """Parse, verify and entropy-decode a stream to ŷ (exact; no diffusion yet)."""
        c = data if isinstance(data, Container) else self.unpack(data)
        self.check_budget(c)
        shapes = self._latent_shapes(c.height, c.width)
        y, z = c.section("Y"), c.section("Z")
        try:
            res = self.model.decompress_latent([[y], [z]], shapes)
        except CorruptStreamError:
            raise
        except Exception as e:  # noqa: BLE001 - the rANS decoder raises plain errors
            raise CorruptStreamError(f"entropy decoding failed ({e})") from e
        if symbols_crc(_symbols_bytes(res["symbols"][0])) != c.symbols_crc:
            raise SymbolMismatchError(
                "decoded latent symbols do not match the encoder's checksum: the entropy "
                "parameters differ between encoder and decoder; refusing to return a wrong image"
            )
        return c, res["y_hat"]

    def settings(self, steps: int | None, gamma: float | None) -> tuple[int, float]:
        """Requested settings with the model's defaults filled in, validated."""
        steps = self.config.default_steps if steps is None else int(steps)
        gamma = self.config.default_gamma if gamma is None else float(gamma)
        try:
            self.model.sampler.timesteps(steps)  # validate before any work
            if gamma < 0:
                raise ValueError(f"gamma must be >= 0, got {gamma}")
        except ValueError as e:
            raise DecodeSettingsError(str(e)) from None
        return steps, gamma

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None,
                         seeds: list[int] | int = 0) -> list[Image.Image]:
        """Decode many streams; equal latent shapes run through the U-Net together.

        Each item starts from its own seed's noise, so a batched decode equals the
        single decodes up to float rounding of batched kernels. Every stream is parsed and
        checked against the decode budget before any of them is decoded; a group of equal
        shapes larger than the memory budget allows runs in several passes.
        """
        steps, gamma = self.settings(steps, gamma)
        seeds = [seeds] * len(datas) if isinstance(seeds, int) else list(seeds)
        if len(seeds) != len(datas):
            raise DecodeSettingsError(f"{len(seeds)} seeds for {len(datas)} streams")
        containers = [self.unpack(d) for d in datas]
        for c in containers:
            self.check_budget(c, steps)
        decoded = [self.decode_latent(c) for c in containers]
        out: list[Image.Image | None] = [None] * len(datas)
        for group in self.groups([y.shape[-2:] for _, y in decoded]):
            per = self.render_batch_size(decoded[group[0]][0], steps, len(group))
            for start in range(0, len(group), per):
                idx = group[start : start + per]
                y_hat = torch.cat([decoded[i][1] for i in idx]).to(self.device)
                x = self.model.render(y_hat, steps=steps, gamma=gamma,
                                      seed=[seeds[i] for i in idx],
                                      autocast_dtype=self.autocast_dtype)
                for j, i in enumerate(idx):
                    c = decoded[i][0]
                    out[i] = tensor_to_image(x[j, :, : c.height, : c.width])
        return out  # type: ignore[return-value]

    def estimate_bits(self, image: ImageLike) -> float:
        """The model's −log2 p of the quantized latents (what an ideal coder would spend)."""
        arr, _ = to_rgb_array(image)
        x, _ = pad_to_multiple(array_to_tensor(arr), self.config.pad_multiple)
        with torch.no_grad():
            y = self.model.g_a(self.model.encode_space(x.to(self.device))).float()
            lik = self.model.entropy(y)["likelihoods"]
        return float(sum(-torch.log2(v).sum() for v in lik.values()))


def cdc_model(obj: dict[str, Any], source: str,
              components: dict[str, dict[str, torch.Tensor]] | None = None
              ) -> tuple[ConditionalDiffusionCompressor, str]:
    """The CDC network of a weights dict, on the space it names (built from ``components``).

    Any codec whose class is a :class:`CDCCodec` (a subclass adds to CDC's stream, so its
    file holds a CDC network) qualifies; a file of another codec is a ``WeightsError``.
    """
    from cdc.errors import WeightsError
    from cdc.registry import CODECS, codec_class, codec_of
    from cdc.weights import model_from_dict, space_of

    name = codec_of(obj)
    if name not in CODECS or not issubclass(codec_class(name), CDCCodec):
        raise WeightsError(f"{source}: weights are for codec {obj.get('codec')!r}, not CDC")
    spec, _ = space_of(obj)
    try:
        space = None if spec.get("name", "pixel") == "pixel" else build_space(spec, components)
    except ValueError as e:
        raise WeightsError(f"{source}: {e}") from e
    return model_from_dict(obj, source, space)


describe = describe_container  # ``cdc info`` for CDC streams (kept under its old name)


__all__ = ["CDCCodec", "cdc_model", "describe", "latent_shapes"]
