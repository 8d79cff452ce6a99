"""The DiffC prior: an unconditional diffusion model (ε-prediction U-Net) on a space.

The network is the CDC denoiser U-Net (:class:`cdc.models.unet.ConditionalUNet`)
built with zero context channels, so it sees only x_t and the time n/N_train.
:class:`DiffusionPrior` adds the schedule and the Gaussian transitions DiffC needs:
the posterior q(x_s | x_t, x_0), the model's p(x_s | x_t) (same mean formula with
x̂_0 in place of x_0, same variance) and DDIM (η ≥ 0) reconstruction from any x_t.
It diffuses in the model units of its space (:mod:`cdc.spaces`): pixels (x̂_0 clipped
to [-1, 1]) or a frozen autoencoder's latent, standardised per channel (no clip), as
the open DiffC implementation with pretrained models codes an autoencoder's latent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdc.diffusion import DDIMSampler, NoiseSchedule
from cdc.errors import WeightsError
from cdc.model_config import CDCConfig, OnSpace, config_from_dict, config_to_dict
from cdc.models.unet import ConditionalUNet
from cdc.presets import TAEF2_MEAN, TAEF2_STD
from cdc.spaces import Space, build_space
from cdc.spaces.units import SpaceUnits
from cdc.weights import pack_weights, space_of

#: Below this SNR (log-SNR −9.2) an ε-model's x̂_0 is noise amplified by 1/√ᾱ; a latent
#: prior (no clip) predicts the mean there. Only the cosine schedule's last levels are below.
MIN_SNR = 1e-4
#: Candidate schemes by name → the plan byte (cdc.diffc.stream.LAYOUT_*).
CANDIDATE_SCHEMES = {"mt19937": 0, "philox": 1}


@dataclass(frozen=True)
class DiffCConfig(OnSpace):
    """Network shapes, diffusion schedule and the coding defaults of a DiffC model."""

    name: str = "diffc-custom"
    # The tensor the prior diffuses (cdc.spaces): "pixel", or "taef2" (frozen autoencoder),
    # standardised per channel by space_mean/space_std (empty: none).
    space: str = "pixel"
    space_mean: tuple[float, ...] = ()
    space_std: tuple[float, ...] = ()
    unet_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()
    attention_head_channels: int = 32
    train_timesteps: int = 1000
    schedule: str = "cosine"
    # Coding defaults (the encoder writes what it used into every stream).
    code_steps: int = 20  # reverse-channel-coded steps after the uncoded start x_{N-1}
    logsnr_first: float = -4.0  # log-SNR of the first coded level
    t_min: int = 15  # the last coded level (train index): the quality ceiling of a full stream
    chunk_kl_bits: float = 6.0  # target KL of one chunk (bits)
    chunk_index_bits: int = 8  # k: 2^k candidates per chunk, k bits per chunk index
    max_index_bits: int = 12  # k may grow to this when a step has fewer dims than chunks
    index_coding: str = "zipf"  # "zipf": rANS-coded indices; "fixed": k bits each
    # Candidate scheme the encoder writes (the decoder reads it from each stream): "philox"
    # (addressable: a decoder computes only the chosen candidate of each chunk) or "mt19937"
    # (torch's generator; what every weights file saved before "philox" existed keeps
    # writing, so their encoders' bytes do not change: see from_dict).
    candidates: str = "philox"
    # Decode defaults.
    default_steps: int = 4  # DDIM steps from the last received level to x_0
    default_gamma: float = 0.0  # DDIM η: 0 = probability flow, 1 = ancestral
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_space()
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"unknown noise schedule {self.schedule!r}")
        if not 1 <= len(self.channel_mults) <= 4:
            raise ValueError("channel_mults must have 1 to 4 levels")
        if not 1 <= self.chunk_index_bits <= self.max_index_bits <= 16:
            raise ValueError("need 1 <= chunk_index_bits <= max_index_bits <= 16")
        if self.index_coding not in ("fixed", "zipf"):
            raise ValueError(f"unknown index coding {self.index_coding!r}")
        if self.candidates not in CANDIDATE_SCHEMES:
            raise ValueError(f"unknown candidate scheme {self.candidates!r}")
        if not 0 < self.chunk_kl_bits <= 16:
            raise ValueError("chunk_kl_bits must be in (0, 16]")
        if not 1 <= self.code_steps <= 255:
            raise ValueError("code_steps must be in 1..255")
        if not 0 <= self.t_min < self.train_timesteps - 1:
            raise ValueError("t_min must be in 0..train_timesteps-2")

    @property
    def pad_multiple(self) -> int:
        """Images are padded to this (pixels): the space's stride times the U-Net's."""
        return self.space_stride * 2 ** (len(self.channel_mults) - 1)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffCConfig:
        """A config without ``candidates`` was saved before scheme 1: it keeps "mt19937"."""
        return config_from_dict(cls, {"candidates": "mt19937", **d})


DIFFC_CONFIGS: dict[str, DiffCConfig] = {
    # For format tests: builds in milliseconds, any weights are random.
    "diffc-test": DiffCConfig(name="diffc-test", unet_channels=8, channel_mults=(1, 2),
                              attention_head_channels=8, code_steps=6, t_min=60, default_steps=2),
    # DiffC on the frozen TAEF2 latent, for tests (random weights, milliseconds a step).
    "ldiffc-test": DiffCConfig(name="ldiffc-test", space="taef2", unet_channels=8,
                               channel_mults=(1, 2), attention_head_channels=8, code_steps=6,
                               t_min=60, default_steps=2),
    # DiffC on the frozen TAEF2 latent (stride 8, 32 channels), standardised per channel:
    # trains on cached latents of the training photos (configs/ldiffc-small.yaml).
    "ldiffc-small": DiffCConfig(name="ldiffc-small", space="taef2", space_mean=TAEF2_MEAN,
                                space_std=TAEF2_STD, unet_channels=64, channel_mults=(1, 2, 2),
                                attention_levels=(2,), attention_head_channels=32,
                                code_steps=20, t_min=15),
    # Trains on a 2-core CPU in half an hour at 32-px crops.
    "diffc-small": DiffCConfig(name="diffc-small", unet_channels=32, channel_mults=(1, 2, 2),
                               attention_levels=(2,), attention_head_channels=32),
    # For GPU training (not shipped yet).
    "diffc-base": DiffCConfig(name="diffc-base", unet_channels=64, channel_mults=(1, 2, 2, 2),
                              num_res_blocks=2, attention_levels=(2, 3), attention_head_channels=64,
                              code_steps=24),
}


def get_diffc_config(name: str) -> DiffCConfig:
    try:
        return DIFFC_CONFIGS[name]
    except KeyError:
        known = ", ".join(DIFFC_CONFIGS)
        raise KeyError(f"unknown DiffC config {name!r}; known: {known}") from None


class UnconditionalUNet(nn.Module):
    """The CDC U-Net with zero context channels: ε̂ = net(x_t, n/N_train)."""

    def __init__(self, cfg: DiffCConfig):
        super().__init__()
        levels = len(cfg.channel_mults)
        self.levels = levels
        self.net = ConditionalUNet(CDCConfig(
            name=cfg.name, unet_channels=cfg.unet_channels, channel_mults=tuple(cfg.channel_mults),
            num_res_blocks=cfg.num_res_blocks, attention_levels=tuple(cfg.attention_levels),
            attention_head_channels=cfg.attention_head_channels, context_mults=(0,) * levels,
            train_timesteps=cfg.train_timesteps, schedule=cfg.schedule, parameterization="eps"),
            in_channels=cfg.space_channels)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        b, _, h, w = x.shape
        ctx = [x.new_zeros(b, 0, h >> i, w >> i) for i in range(self.levels)]
        return self.net(x, t, ctx)


class DiffusionPrior(SpaceUnits, nn.Module):
    """U-Net + schedule on a space: the Gaussian transitions DiffC codes against."""

    def __init__(self, cfg: DiffCConfig, space: Space | None = None):
        super().__init__()
        self.cfg = cfg
        self.init_units(space, cfg)
        self.unet = UnconditionalUNet(cfg)
        self.schedule = NoiseSchedule(cfg.schedule, cfg.train_timesteps)
        # Float64 scalar coefficients, as the reverse-channel coder uses at both ends.
        self.sampler = DDIMSampler(self.schedule, "eps", scalar=True, min_snr=MIN_SNR)

    # -- schedule helpers (float64 scalars so encoder and decoder agree) -----------------
    def abar(self, n: int) -> float:
        return float(self.schedule.alphas_cumprod[n])

    def logsnr(self, n: int) -> float:
        a = self.abar(n)
        return float(torch.log(torch.tensor(a / (1 - a), dtype=torch.float64)))

    def code_times(self, steps: int | None = None, t_min: int | None = None,
                   logsnr_first: float | None = None) -> list[int]:
        """Coded levels t_1 > … > t_K, evenly spaced in log-SNR, ending at ``t_min``."""
        cfg = self.cfg
        steps = cfg.code_steps if steps is None else int(steps)
        t_min = cfg.t_min if t_min is None else int(t_min)
        lo = cfg.logsnr_first if logsnr_first is None else float(logsnr_first)
        n = cfg.train_timesteps
        table = torch.log(self.schedule.alphas_cumprod / (1 - self.schedule.alphas_cumprod))
        hi = float(table[t_min])
        lo = min(lo, hi)
        times: list[int] = []
        for i in range(steps):
            target = lo + (hi - lo) * (i + 1) / steps if steps > 1 else hi
            t = int(torch.argmin((table - target).abs()))
            t = min(max(t, t_min), n - 2)
            if times and t >= times[-1]:
                t = times[-1] - 1
            if t < t_min:
                break
            times.append(t)
        return times

    # -- network --------------------------------------------------------------------------
    def eps(self, x: Tensor, n: int) -> Tensor:
        t = torch.full((x.shape[0],), n / self.cfg.train_timesteps, device=x.device)
        return self.unet(x, t).float()

    def x0_hat(self, x: Tensor, n: int, clip: bool = True) -> tuple[Tensor, Tensor]:
        """(x̂_0, ε̂) at level n; for pixels x̂_0 is clipped to [-1, 1] and ε̂ re-derived; in
        a latent, below SNR :data:`MIN_SNR` x̂_0 is the mean (see :class:`DDIMSampler`)."""
        a, clip = self.abar(n), clip and self.clip
        out = torch.zeros_like(x) if self.sampler.mean_replaces(a, clip) else self.eps(x, n)
        return self.sampler.predict(out, x, a, clip)

    def posterior_coeffs(self, t: int, s: int) -> tuple[float, float, float]:
        """q(x_s | x_t, x_0) = N(c0·x_0 + ct·x_t, σ²) for s < t (t = N-1 allowed)."""
        at, as_ = self.abar(t), self.abar(s)
        ats = at / as_
        c0 = as_ ** 0.5 * (1 - ats) / (1 - at)
        ct = ats ** 0.5 * (1 - as_) / (1 - at)
        var = (1 - as_) * (1 - ats) / (1 - at)
        return c0, ct, var ** 0.5

    # -- reconstruction -------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: Tensor, t: int, steps: int, eta: float = 0.0,
                    seed: int = 0) -> Tensor:
        """DDIM from x_t to x̂_0 in ``steps`` network calls (η = 0: probability flow)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if eta < 0:
            raise ValueError(f"gamma (DDIM eta) must be >= 0, got {eta}")
        gen = torch.Generator().manual_seed(int(seed))
        return self.sampler.sample(lambda x_t, tt: self.unet(x_t, tt), x, steps, clip=self.clip,
                                   start=t, to_zero=False, eta=eta, generator=gen)

    def loss(self, x0: Tensor) -> Tensor:
        """ε-prediction MSE at uniformly drawn levels (DDPM's simple loss); ``x0`` in model
        units (:meth:`encode_space` of an image, or a cached latent standardised)."""
        b = x0.shape[0]
        n = torch.randint(0, self.cfg.train_timesteps, (b,), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.schedule.q_sample(x0, n, noise)
        return F.mse_loss(self.unet(x_t, self.schedule.time(n)).float(), noise)


# -- weights files ----------------------------------------------------------------------------
def weights_bytes(prior: DiffusionPrior, model_id: str, half: bool = False,
                  meta: dict[str, Any] | None = None) -> bytes:
    """A weights file (``codec: "diffc"``); a latent prior names its space by digest."""
    sd = prior.network_state_dict()
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    return pack_weights("diffc", model_id, prior.cfg.to_dict(), sd, meta, prior.space)


def prior_from_dict(obj: dict[str, Any], source: str,
                    components: dict[str, dict[str, Tensor]] | None = None
                    ) -> tuple[DiffusionPrior, str]:
    """The prior of a weights dict, on the space it names (built from ``components``)."""
    if obj.get("codec") != "diffc":
        raise WeightsError(f"{source}: weights are for codec {obj.get('codec')!r}, not DiffC")
    try:
        cfg = DiffCConfig.from_dict(obj["config"])
        spec, _ = space_of(obj)
        if spec.get("name", "pixel") != cfg.space:
            raise ValueError(f"the file's space {spec.get('name', 'pixel')!r} is not the "
                             f"config's {cfg.space!r}")
        space = None if cfg.space == "pixel" else build_space(spec, components)
        prior = DiffusionPrior(cfg, space)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: bad DiffC config ({e})") from e
    sd = {k: v.float() if v.dtype == torch.float16 else v for k, v in obj["state_dict"].items()}
    own = prior.state_dict()
    sd.update({k: v for k, v in own.items() if k.startswith("space.")})  # frozen, by digest
    try:
        prior.load_state_dict(sd)
    except RuntimeError as e:
        raise WeightsError(f"{source}: weights do not fit config {cfg.name!r} ({e})") from e
    return prior.eval(), str(obj.get("model_id", cfg.name))
