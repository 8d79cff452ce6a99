"""The entropy model: CompressAI's mean-scale hyperprior, made exact across devices.

CompressAI chooses each Gaussian's CDF table by comparing float scales from the
hyper-synthesis against a table (``build_indexes``). If the encoder (say a GPU in
bf16) and the decoder (a CPU) compute slightly different scales, they can pick
different tables and the decoder silently produces garbage. Here the
hyper-synthesis runs, outside training, on the CPU in float64 at both ends (it is
tiny: it works at H/64 → H/16), so both ends see bit-identical parameters. The
decoded symbols are also returned so the container can carry their checksum and
any remaining mismatch becomes an explicit error.

Decoding checks every rANS string before CompressAI's C++ decoder sees it
(:mod:`cdc.rans`): whole 32-bit words, enough bytes for the symbols the shapes imply at
the fewest bits each CDF allows (z before anything runs, y once its CDF indexes are
known), then the string is padded so the decoder's renormalisation reads stay inside it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import (
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from torch import Tensor, nn

from cdc.rans import check_string, padded

# Log-spaced scales in [0.11, 256] like CompressAI's table, but 256 levels instead of 64:
# the coder uses the next larger tabulated scale, and with 64 levels (13% apart) that
# cost ~1.9% over the model's estimate on our CPU model; 256 levels (3% apart) cost
# ~0.6% (bench/bench_rate.py) for 3 MB more tables in the weights file.
SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256.0, 256


def scale_table(scale_max: float = SCALES_MAX) -> list[float]:
    """``SCALES_LEVELS`` log-spaced scales; a model may cap the largest (``cfg.scale_max``):
    the CDF tables are padded to the longest row, so the cap sets their size."""
    import math

    lo, hi = math.log(SCALES_MIN), math.log(scale_max)
    return [math.exp(lo + (hi - lo) * i / (SCALES_LEVELS - 1)) for i in range(SCALES_LEVELS)]


class CanonicalHyperSynthesis(nn.Module):
    """Runs ``net`` normally while training; on CPU float64 otherwise.

    The float64 copy is cached and rebuilt whenever a parameter changes (tracked
    with tensors' in-place version counters), so loading weights or an optimizer
    step can never leave a stale copy behind.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self._cache: nn.Module | None = None
        self._cache_key: tuple | None = None

    def _key(self) -> tuple:
        return tuple((id(p), p._version) for p in self.net.parameters())

    def canonical(self) -> nn.Module:
        key = self._key()
        if self._cache is None or self._cache_key != key:
            with torch.no_grad():
                net = copy.deepcopy(self.net).to(device="cpu", dtype=torch.float64).eval()
            object.__setattr__(self, "_cache", net)  # not a registered submodule
            self._cache_key = key
        return self._cache  # type: ignore[return-value]

    def forward(self, z_hat: Tensor) -> Tensor:
        if self.training:
            return self.net(z_hat)
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            out = self.canonical()(z_hat.detach().to("cpu", torch.float64))
        return out.to(device=z_hat.device, dtype=torch.float32)


def min_symbol_bits(cdf: Tensor, lengths: Tensor) -> Tensor:
    """(rows,) float64: the fewest bits a symbol coded with each CDF row can cost."""
    cdf = cdf.to(torch.int64)
    if cdf.numel() == 0:
        return torch.zeros(cdf.shape[0], dtype=torch.float64)
    freq = cdf[:, 1:] - cdf[:, :-1]
    valid = torch.arange(freq.shape[1])[None] < (lengths.to(torch.int64) - 1)[:, None]
    fmax = freq.masked_fill(~valid, 0).max(1).values.clamp(min=1).double()
    return torch.log2(65536.0 / fmax)


class SymbolGaussianLatentCodec(GaussianConditionalLatentCodec):
    """Gaussian conditional that also reports the integer symbols it coded."""

    def compress(self, y: Tensor, ctx_params: Tensor) -> dict[str, Any]:
        scales, means = self._chunk(self.entropy_parameters(ctx_params))
        gc = self.gaussian_conditional
        indexes = gc.build_indexes(scales)
        symbols = gc.quantize(y, "symbols", means)
        strings = gc.compress(y, indexes, means)
        y_hat = gc.dequantize(symbols, means)
        return {"strings": [strings], "shape": y.shape[2:4], "y_hat": y_hat, "symbols": symbols}

    def decompress(
        self, strings: list[list[bytes]], shape: tuple[int, int], ctx_params: Tensor, **kw: Any
    ) -> dict[str, Any]:
        (y_strings,) = strings
        scales, means = self._chunk(self.entropy_parameters(ctx_params))
        gc = self.gaussian_conditional
        indexes = gc.build_indexes(scales).cpu()
        bits = min_symbol_bits(gc._quantized_cdf, gc._cdf_length)
        y_strings = list(y_strings)
        for i, string in enumerate(y_strings):
            idx = indexes[i].reshape(-1).long()
            check_string(string, idx.numel(), float(bits[idx].sum()), "section 'Y'")
            y_strings[i] = padded(string, idx.numel())
        symbols = gc.decompress(y_strings, indexes).to(means.device).int()
        if tuple(symbols.shape[2:4]) != tuple(shape):
            raise ValueError(f"latent shape {tuple(symbols.shape[2:4])} != {tuple(shape)}")
        # dequantize() adds the means in place on float input: pass the int copy.
        return {"y_hat": gc.dequantize(symbols, means), "symbols": symbols}


class MeanScaleHyperprior(HyperpriorLatentCodec):
    """CompressAI's HyperpriorLatentCodec whose outputs include the y symbols."""

    def __init__(self, h_a: nn.Module, h_s: nn.Module, hyper_channels: int,
                 scale_max: float = SCALES_MAX):
        self.scale_max = scale_max
        super().__init__(
            latent_codec={
                "y": SymbolGaussianLatentCodec(scale_table=scale_table(scale_max)),
                "hyper": HyperLatentCodec(
                    entropy_bottleneck=EntropyBottleneck(hyper_channels),
                    h_a=h_a,
                    h_s=CanonicalHyperSynthesis(h_s),
                ),
            }
        )

    @property
    def entropy_bottleneck(self) -> EntropyBottleneck:
        return self.hyper.entropy_bottleneck

    @property
    def gaussian_conditional(self) -> GaussianConditional:
        return self.y.gaussian_conditional

    def compress(self, y: Tensor) -> dict[str, Any]:
        hyper_out = self.hyper.compress(y)
        y_out = self.y.compress(y, hyper_out["params"])
        return {
            "strings": [*y_out["strings"], *hyper_out["strings"]],
            "shape": {"y": tuple(y_out["shape"]), "hyper": tuple(hyper_out["shape"])},
            "y_hat": y_out["y_hat"],
            "symbols": y_out["symbols"],
        }

    def decompress(
        self, strings: list[list[bytes]], shape: dict[str, tuple[int, int]], **kw: Any
    ) -> dict[str, Any]:
        y_strings, z_strings = strings
        eb = self.entropy_bottleneck
        positions = int(shape["hyper"][0]) * int(shape["hyper"][1])
        n_z = eb._quantized_cdf.shape[0] * positions
        z_bits = float(min_symbol_bits(eb._quantized_cdf, eb._cdf_length).sum()) * positions
        for string in z_strings:
            check_string(string, n_z, z_bits, "section 'Z'")
        z_strings = [padded(string, n_z) for string in z_strings]
        hyper_out = self.hyper.decompress([z_strings], shape["hyper"])
        y_out = self.y.decompress([y_strings], shape["y"], hyper_out["params"])
        return {"y_hat": y_out["y_hat"], "symbols": y_out["symbols"]}

    def update(self, force: bool = True) -> None:
        """Compute the CDF tables once; they are stored with the weights."""
        self.entropy_bottleneck.update(force=force)
        self.gaussian_conditional.update_scale_table(scale_table(self.scale_max), force=force)

    def aux_loss(self) -> Tensor:
        return self.entropy_bottleneck.loss()
