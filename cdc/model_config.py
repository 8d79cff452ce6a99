"""Model configuration: one dataclass shared by tiny test models and real ones.

A config fully determines the network shapes, so weights files store it and the
registry can rebuild a model from a name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Pixel-space defaults: the content latent at H/16, the hyper latent at H/64.
LATENT_STRIDE = 16
HYPER_STRIDE = 64
#: The hyper latent sits this many times coarser than the content latent.
HYPER_FACTOR = 4
#: (stride, channels) of each known space; see :mod:`cdc.spaces`.
SPACE_GEOMETRY = {"pixel": (1, 3), "taef2": (8, 32)}


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as JSON/YAML-friendly data (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def config_from_dict(cls: type, d: dict[str, Any], what: str = "config") -> Any:
    """The inverse of :func:`config_to_dict`; unknown keys are an error (lists → tuples)."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} keys: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class OnSpace:
    """What every model config that names a space shares (fields ``space``, ``space_mean``,
    ``space_std``; see :mod:`cdc.spaces`): the checks and the space's geometry."""

    space: str
    space_mean: tuple[float, ...]
    space_std: tuple[float, ...]

    def check_space(self) -> None:
        if self.space not in SPACE_GEOMETRY:
            raise ValueError(f"unknown space {self.space!r}; known: {sorted(SPACE_GEOMETRY)}")
        n = self.space_channels
        if ((self.space_mean or self.space_std)
                and not len(self.space_mean) == len(self.space_std) == n):
            raise ValueError(f"space_mean/space_std need {n} values each")

    @property
    def space_stride(self) -> int:
        return SPACE_GEOMETRY[self.space][0]

    @property
    def space_channels(self) -> int:
        return SPACE_GEOMETRY[self.space][1]


@dataclass(frozen=True)
class CDCConfig(OnSpace):
    """Shapes and diffusion settings of a Conditional Diffusion Compression model."""

    name: str = "cdc-custom"
    # The tensor the networks work on (cdc.spaces): "pixel", or "taef2" (frozen autoencoder).
    space: str = "pixel"
    y_stride: int = LATENT_STRIDE  # stride of the content latent y relative to the space
    # Per-channel normalisation of the space tensor for diffusion (empty: none).
    space_mean: tuple[float, ...] = ()
    space_std: tuple[float, ...] = ()
    # Fraction of each training batch denoised from the sampler's own start x_N = γ·ε
    # (γ ∈ [0, 1]): teaches the 1-step and γ = 0 paths what they will see at decode time.
    top_fraction: float = 0.0
    # Transform coding side (CompressAI mean-scale hyperprior).
    encoder_channels: int = 128  # hidden width of the analysis transform g_a
    latent_channels: int = 256  # M: channels of the content latent y at H/16
    hyper_channels: int = 128  # N: channels of the hyper latent z at H/64
    # Largest scale of the Gaussian coder's table (its CDF rows are padded to the longest,
    # so this sets most of the tables' size in the weights file).
    scale_max: float = 256.0
    # Denoiser U-Net; level i works at H / 2**i and receives context level i.
    unet_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (3,)
    attention_head_channels: int = 32
    context_mults: tuple[int, ...] = (1, 2, 3, 4)  # context channels = unet_channels * mult
    # Diffusion.
    train_timesteps: int = 1000
    schedule: str = "cosine"  # "cosine" | "linear"
    parameterization: str = "x0"  # "x0" | "eps"
    # Decode defaults (overridable per call / per archive tier).
    default_steps: int = 4
    default_gamma: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"unknown noise schedule {self.schedule!r}")
        if self.parameterization not in ("x0", "eps"):
            raise ValueError(f"unknown parameterization {self.parameterization!r}")
        if len(self.context_mults) != len(self.channel_mults):
            raise ValueError("context_mults and channel_mults must have the same length")
        if len(self.channel_mults) > 4:
            raise ValueError("the context decoder provides at most 4 levels (H .. H/8)")
        if any(not 0 <= i < len(self.channel_mults) for i in self.attention_levels):
            raise ValueError("attention_levels must index channel_mults")
        self.check_space()
        if self.y_stride not in (1, 2, 4, 8, 16):
            raise ValueError(f"y_stride must be a power of two <= 16, got {self.y_stride}")

    @property
    def latent_stride(self) -> int:
        """Stride of the content latent y in image pixels (16 for cdc-small)."""
        return self.space_stride * self.y_stride

    @property
    def hyper_stride(self) -> int:
        return self.latent_stride * HYPER_FACTOR

    @property
    def pad_multiple(self) -> int:
        """Images are padded to this multiple so every stride divides evenly."""
        return self.hyper_stride

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CDCConfig:
        return config_from_dict(cls, d)
