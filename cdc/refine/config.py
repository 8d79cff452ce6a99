"""The refine model's config: network shape, diffusion schedule, base layer, blend bound."""

from __future__ import annotations

from dataclasses import dataclass

from cdc.config import config_from_dict, config_to_dict
from cdc.refine import downscale


@dataclass(frozen=True)
class RefineConfig:
    """Everything that fixes the network's shapes and what the stream's bytes mean.

    The denoiser predicts the *residual* r0 = (x0 − base) / ``residual_std`` from the
    upsampled base decode, the noisy residual x_t and the time; x̂0 = base + std·r̂0.
    """

    name: str = "refine-small"
    # Where the refiner works: "pixel" (RefineNet, a residual U-Net on pixels) or "taef2"
    # (LatentRefineNet on the TAEF2 latents of the base; ``channels[0]`` wide, ``blocks``
    # deep, ``net_tile``/``net_margin`` still in pixels).
    space: str = "pixel"
    channels: tuple[int, ...] = (32, 64, 128)  # per level, at H/2, H/4, H/8
    blocks: int = 2  # residual blocks per level (encoder side; the decoder has as many)
    head_channels: int = 16  # full-resolution head
    temb_channels: int = 128
    residual_std: float = 0.1  # the residual's scale in the diffusion's units
    train_timesteps: int = 1000
    schedule: str = "cosine"
    default_steps: int = 1
    default_gamma: float = 0.0
    # Base layer: the classical codec, its fixed encoder settings, and the downscales the
    # encoder may pick below the codec's lowest rate at full size.
    base_codec: str = "avif"
    base_speed: int = 6
    base_subsampling: str = "4:2:0"
    # libaom's tuning of the base (encoder-side only): "" (libavif's default, as `cdc eval`'s
    # AVIF baseline) or "psnr": 0.15-0.7 dB more PSNR at the same bytes on validation photos,
    # but a blurrier base (LPIPS-VGG worse on 3 of 4 validation rows, and the refiner was
    # trained on default-tuned bases): measured, not shipped (docs/results/refine-validation).
    base_tune: str = ""
    # Keep only the AV1 payload and 3 bytes of its configuration, not AVIF's 275 bytes of
    # HEIF boxes (rebuilt by the decoder, byte-identical: cdc/refine/bare_avif.py); off for
    # weights written before it (their golden streams keep whole AVIF files).
    base_bare: bool = False
    # The largest downscale the encoder may use (and any factor it must try): it walks
    # :data:`cdc.refine.downscale.FINE_LADDER` (1, 4/3, 3/2, 2, 8/3, 3, 4 …) up to the largest.
    scales: tuple[float, ...] = (1, 2, 4)
    # Fidelity bound: blend weights per ``tile``×``tile`` block, 2**bits table entries.
    tile: int = 64
    weight_bits: int = 3
    # The PSNR a tile may lose to its base layer: deterministic paths (γ = 0: `standard`)
    # and paths from noise (γ > 0: `high`, which trades more fidelity for texture).
    bound_db: float = 0.3
    bound_db_noisy: float = 1.5
    # Large images run the network in tiles of this side with this margin on each side
    # (no normalisation layers: a tile's output depends only on its receptive field).
    net_tile: int = 512
    net_margin: int = 64
    # Latent space only: take the 8-pixel grid that TAEF2's decoder paints out of the
    # refinement, estimated over this many latent cells around each cell (cdc/refine/
    # degrid.py); 0: off (weights files written before it decode as they did).
    degrid_window: int = 0

    def __post_init__(self) -> None:
        if self.space not in ("pixel", "taef2"):
            raise ValueError(f"unknown refine space {self.space!r}; known: pixel, taef2")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.base_codec != "avif":
            raise ValueError(f"unknown base codec {self.base_codec!r}; known: avif")
        if self.base_tune not in ("", "psnr", "ssim"):
            raise ValueError(f"base_tune must be '', 'psnr' or 'ssim', got {self.base_tune!r}")
        if not self.scales:
            raise ValueError("scales must list at least one downscale")
        for s in self.scales:
            downscale.code(s)  # ValueError names the factor
        if not 1 <= self.weight_bits <= 8:
            raise ValueError(f"weight_bits must be in 1..8, got {self.weight_bits}")
        if self.degrid_window < 0 or (self.degrid_window and self.space != "taef2"):
            raise ValueError("degrid_window must be >= 0, and 0 outside latent space")
        if self.tile < 8 or self.net_tile % self.multiple or self.net_margin % self.multiple:
            raise ValueError("tile >= 8; net_tile and net_margin multiples of "
                             f"{self.multiple}")

    @property
    def multiple(self) -> int:
        """The network's input sides must be multiples of this (unshuffle × pooling, or
        the latent's stride)."""
        return 8 if self.space == "taef2" else 2 ** len(self.channels)

    @property
    def pad_multiple(self) -> int:
        return 1  # the base layer codes the image as it is; the network pads internally

    @property
    def table(self) -> tuple[float, ...]:
        """Blend weights w ∈ {0, 1/(n−1), …, 1}: output = base + w·(refined − base)."""
        n = 1 << self.weight_bits
        return tuple(i / (n - 1) for i in range(n))

    def bound_for(self, gamma: float) -> float:
        return self.bound_db if gamma == 0 else self.bound_db_noisy

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RefineConfig:
        return config_from_dict(cls, d, "refine config")


REFINE_CONFIGS: dict[str, RefineConfig] = {
    # Format and contract tests: a few thousand parameters.
    "refine-test": RefineConfig(name="refine-test", channels=(8, 16), blocks=1,
                                head_channels=8, temb_channels=16, net_tile=64,
                                net_margin=16, tile=16),
    "refine-latent-test": RefineConfig(name="refine-latent-test", space="taef2",
                                       channels=(8,), blocks=1, temb_channels=16,
                                       net_tile=64, net_margin=32, tile=16,
                                       degrid_window=8, base_bare=True),
    # The pixel-space model of session 7-8 (abandoned by measurement; configs/legacy).
    "refine-small": RefineConfig(),
    # The shipped design: ~1 M parameters on TAEF2 latents, trained on one CPU core.
    # residual_std: the rms of z − zb over the training pairs (0.647). degrid_window 8:
    # chosen by eye on the validation split (docs/results/refine-validation/degrid.md).
    "refine-latent": RefineConfig(name="refine-latent", space="taef2", channels=(96,),
                                  blocks=6, temb_channels=128, residual_std=0.65,
                                  net_tile=512, net_margin=128, degrid_window=8,
                                  base_bare=True),
}


#: Decode paths (steps, γ, seed) encoded when no archive tiers say otherwise: `standard`, `high`.
DEFAULT_PATHS: tuple[tuple[int, float, int], ...] = ((1, 0.0, 0), (3, 0.6, 0))


def recommended_tiers(meta: dict) -> dict[str, dict]:
    """A refine model's tiers: its weights file's ``meta["tiers"]``, else the defaults."""
    return meta.get("tiers") or {
        "preview": {"steps": 0, "gamma": 0.0, "seed": 0},
        "standard": {"steps": 1, "gamma": 0.0, "seed": 0},
        "high": {"steps": DEFAULT_PATHS[1][0], "gamma": DEFAULT_PATHS[1][1], "seed": 0}}


def decode_defaults(cfg: RefineConfig) -> dict:
    return {"default_steps": cfg.default_steps, "default_gamma": cfg.default_gamma}
