"""Model configuration: one dataclass shared by tiny test models and real ones.

A config fully determines the network shapes, so weights files store it and the
registry can rebuild a model from a name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Stride of the content latent (H/16) and of the hyper latent (H/64).
LATENT_STRIDE = 16
HYPER_STRIDE = 64


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as JSON/YAML-friendly data (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def config_from_dict(cls: type, d: dict[str, Any], what: str = "config") -> Any:
    """The inverse of :func:`config_to_dict`; unknown keys are an error (lists → tuples)."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} keys: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class CDCConfig:
    """Shapes and diffusion settings of a Conditional Diffusion Compression model."""

    name: str = "cdc-custom"
    # Transform coding side (CompressAI mean-scale hyperprior).
    encoder_channels: int = 128  # hidden width of the analysis transform g_a
    latent_channels: int = 256  # M: channels of the content latent y at H/16
    hyper_channels: int = 128  # N: channels of the hyper latent z at H/64
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

    @property
    def pad_multiple(self) -> int:
        """Images are padded to this multiple so every stride divides evenly."""
        return HYPER_STRIDE

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CDCConfig:
        return config_from_dict(cls, d)
