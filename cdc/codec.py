"""CDCCodec: images ↔ self-contained byte streams with a trained CDC model.

Usable without the CLI::

    codec = CDCCodec.from_pretrained("cdc-small")
    data = codec.compress(Image.open("a.png"))
    img = codec.decompress(data, steps=4, gamma=0.8, seed=1)
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from cdc.bitstream import DIGEST_BYTES, Container, symbols_crc
from cdc.config import HYPER_STRIDE, LATENT_STRIDE
from cdc.errors import CorruptStreamError, SymbolMismatchError
from cdc.image import SourceMode, array_to_tensor, pad_to_multiple, tensor_to_image, to_rgb_array
from cdc.interface import ImageLike
from cdc.models import ConditionalDiffusionCompressor
from cdc.zoo import load_weights

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None, "fp32": None}


def _symbols_bytes(symbols: torch.Tensor) -> bytes:
    return symbols.to("cpu", torch.int32).contiguous().numpy().astype("<i4").tobytes()


class CDCCodec:
    """Conditional Diffusion Compression with a real entropy-coded bitstream."""

    codec_id = "cdc"

    def __init__(self, model: ConditionalDiffusionCompressor, model_id: str, weights_sha256: str,
                 device: str | torch.device = "cpu", precision: str | None = None):
        """``precision``: None/"fp32", or "bf16"/"fp16" autocast for the heavy networks.

        The entropy parameters are computed in float64 on the CPU whatever the
        precision, so streams stay decodable across devices and precisions.
        """
        if precision not in _AUTOCAST:
            raise ValueError(f"precision must be one of fp32, bf16, fp16; got {precision!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model_id = model_id
        self.weights_sha256 = weights_sha256
        self.digest = bytes.fromhex(weights_sha256)[:DIGEST_BYTES]
        self.autocast_dtype = _AUTOCAST[precision]
        self.meta: dict[str, Any] = {}  # the weights file's training facts and recommended tiers

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device = "cpu",
                        precision: str | None = None, sha256: str | None = None) -> CDCCodec:
        loaded = load_weights(name_or_path, sha256=sha256)
        return cls(loaded.model, loaded.model_id, loaded.sha256, device, precision)

    @classmethod
    def from_weights(cls, obj: dict[str, Any], sha256: str, source: str,
                     device: str | torch.device = "cpu", precision: str | None = None) -> CDCCodec:
        """From a validated weights dict (``cdc.zoo.load_codec`` dispatches here)."""
        from cdc.zoo.weights import model_from_dict

        model, model_id = model_from_dict(obj, source)
        codec = cls(model, model_id, sha256, device, precision)
        codec.meta = dict(obj.get("meta") or {})
        return codec

    @property
    def config(self):
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
    def compress(self, image: ImageLike) -> bytes:
        return self.compress_batch([image])[0]

    def compress_batch(self, images: list[ImageLike]) -> list[bytes]:
        """Encode many images; equal padded sizes are stacked into one forward pass."""
        prepared = []
        for img in images:
            arr, mode = to_rgb_array(img)
            x, replicate = pad_to_multiple(array_to_tensor(arr), self.config.pad_multiple)
            prepared.append((x, arr.shape[0], arr.shape[1], mode, replicate))
        out: list[bytes | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (x, *_rest) in enumerate(prepared):
            groups.setdefault(tuple(x.shape[-2:]), []).append(i)
        for idx in groups.values():
            batch = torch.cat([prepared[i][0] for i in idx]).to(self.device)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                enabled=self.autocast_dtype is not None):
                res = self.model.compress_latent(batch)
            y_strings, z_strings = res["strings"]
            for j, i in enumerate(idx):
                _, h, w, mode, replicate = prepared[i]
                out[i] = Container(
                    codec=self.codec_id, model_digest=self.digest, height=h, width=w,
                    symbols_crc=symbols_crc(_symbols_bytes(res["symbols"][j])),
                    flags=int(replicate) | (int(mode) << 1),
                    sections={"Z": z_strings[j], "Y": y_strings[j]},
                ).pack()
        return out  # type: ignore[return-value]

    # -- decoding -------------------------------------------------------------------------
    def _latent_shapes(self, h: int, w: int) -> dict[str, tuple[int, int]]:
        m = self.config.pad_multiple
        ph, pw = h + (-h) % m, w + (-w) % m
        return {"y": (ph // LATENT_STRIDE, pw // LATENT_STRIDE),
                "hyper": (ph // HYPER_STRIDE, pw // HYPER_STRIDE)}

    def decode_latent(self, data: bytes) -> tuple[Container, torch.Tensor]:
        """Parse, verify and entropy-decode a stream to ŷ (exact; no diffusion yet)."""
        c = Container.unpack(data)
        c.require(self.codec_id, self.digest, self.model_id)
        shapes = self._latent_shapes(c.height, c.width)
        try:
            res = self.model.decompress_latent([[c.section("Y")], [c.section("Z")]], shapes)
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

    def decompress(self, data: bytes, steps: int | None = None, gamma: float | None = None,
                   seed: int = 0) -> Image.Image:
        """Rebuild the image: DDIM with ``steps`` steps from x_N = γ·noise(seed)."""
        return self.decompress_batch([data], steps=steps, gamma=gamma, seeds=[seed])[0]

    def decompress_batch(self, datas: list[bytes], steps: int | None = None,
                         gamma: float | None = None, seeds: list[int] | int = 0) -> list[Image.Image]:
        """Decode many streams; equal latent shapes run through the U-Net together.

        Each item starts from its own seed's noise, so a batched decode equals the
        single decodes up to float rounding of batched kernels.
        """
        steps = self.config.default_steps if steps is None else int(steps)
        gamma = self.config.default_gamma if gamma is None else float(gamma)
        seeds = [seeds] * len(datas) if isinstance(seeds, int) else list(seeds)
        if len(seeds) != len(datas):
            raise ValueError(f"{len(seeds)} seeds for {len(datas)} streams")
        self.model.sampler.timesteps(steps)  # validate before any work
        decoded = [self.decode_latent(d) for d in datas]
        out: list[Image.Image | None] = [None] * len(datas)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (_, y_hat) in enumerate(decoded):
            groups.setdefault(tuple(y_hat.shape[-2:]), []).append(i)
        for idx in groups.values():
            y_hat = torch.cat([decoded[i][1] for i in idx]).to(self.device)
            x = self.model.render(y_hat, steps=steps, gamma=gamma, seed=[seeds[i] for i in idx],
                                  autocast_dtype=self.autocast_dtype)
            for j, i in enumerate(idx):
                c = decoded[i][0]
                out[i] = tensor_to_image(x[j, :, : c.height, : c.width])
        return out  # type: ignore[return-value]

    def info(self, data: bytes) -> dict[str, Any]:
        d = describe(data)
        d["model_matches"] = d["model_digest"] == self.digest.hex()
        return d

    def estimate_bits(self, image: ImageLike) -> float:
        """The model's −log2 p of the quantized latents (what an ideal coder would spend)."""
        arr, _ = to_rgb_array(image)
        x, _ = pad_to_multiple(array_to_tensor(arr), self.config.pad_multiple)
        with torch.no_grad():
            y = self.model.g_a(x.to(self.device)).float()
            lik = self.model.entropy(y)["likelihoods"]
        return float(sum(-torch.log2(v).sum() for v in lik.values()))


def describe(data: bytes) -> dict[str, Any]:
    """What ``cdc info`` shows; needs no model."""
    c = Container.unpack(data)
    mode = SourceMode((c.flags >> 1) & 0b111)
    m = 64
    ph, pw = c.height + (-c.height) % m, c.width + (-c.width) % m
    return {
        "codec": c.codec,
        "format_version": c.version,
        "model_digest": c.model_digest.hex(),
        "width": c.width,
        "height": c.height,
        "padded": f"{pw}x{ph} ({'replicate' if c.flags & 1 else 'reflect'})",
        "latent_shapes": {"y": [ph // LATENT_STRIDE, pw // LATENT_STRIDE],
                          "z": [ph // HYPER_STRIDE, pw // HYPER_STRIDE]},
        "source": mode.note,
        "bytes": len(data),
        "bpp": 8 * len(data) / (c.width * c.height),
        "header_bytes": c.header_bytes,
        "sections": {k: len(v) for k, v in c.sections.items()},
        "symbols_crc32": f"{c.symbols_crc:08x}",
    }


__all__ = ["CDCCodec", "describe"]
