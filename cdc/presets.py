"""CDC's named model presets (untrained shapes): a shipped model's registry entry names one.

(Training configs, the YAML files in ``configs/``, are another thing: they name a preset
in ``model_config``; :mod:`cdc.model_config` holds the dataclass.)
"""

from __future__ import annotations

from cdc.model_config import CDCConfig

TAEF2_MEAN = (0.02, -0.05, -0.17, -0.05, 0.09, 0.17, 0.07, -0.14, 0.04, -0.04, 0.07, -0.04,
              0.14, 0.03, 0.13, 0.06, 0.13, 0.11, -0.01, -0.17, 0.01, 0.06, -0.16, -0.07, 0.18,
              -0.01, 0.09, 0.14, 0.07, 0.22, -0.04, -0.07)
TAEF2_STD = (0.70, 0.95, 0.96, 0.90, 0.74, 0.91, 1.01, 0.81, 0.97, 0.61, 0.63, 1.01, 0.70, 0.66,
             0.93, 0.97, 0.73, 0.68, 0.71, 1.03, 0.71, 0.68, 0.75, 0.68, 0.95, 0.72, 0.92, 0.84,
             0.76, 0.96, 0.76, 0.94)

PRESETS: dict[str, CDCConfig] = {
    # For format tests: builds in milliseconds, any weights are random.
    "cdc-test": CDCConfig(
        name="cdc-test", encoder_channels=16, latent_channels=16, hyper_channels=16,
        unet_channels=8, channel_mults=(1, 1, 2, 2), context_mults=(1, 1, 1, 1),
        attention_levels=(3,), attention_head_channels=8, default_steps=2,
    ),
    # Trains on a 2-core CPU in about two hours: the README demo model.
    "cdc-small": CDCConfig(
        name="cdc-small", encoder_channels=64, latent_channels=64, hyper_channels=64,
        unet_channels=32, channel_mults=(1, 2, 2, 4), context_mults=(1, 1, 2, 2),
        attention_levels=(3,), attention_head_channels=32, default_steps=3,
    ),
    # Latent CDC on the frozen TAEF2 autoencoder (stride 8, 32 channels): y at H/16, z at
    # H/64, a 3-level U-Net at H/8 .. H/32. Normalisation: per-channel mean/std of TAEF2
    # latents of 137 BSDS500 training photos (pipeline.training.latent_cache cache).
    "lcdc-test": CDCConfig(
        name="lcdc-test", space="taef2", y_stride=2, encoder_channels=16, latent_channels=16,
        hyper_channels=16, unet_channels=8, channel_mults=(1, 2, 2), context_mults=(1, 1, 1),
        attention_levels=(2,), attention_head_channels=8, default_steps=2, top_fraction=0.25,
    ),
    "lcdc-small": CDCConfig(
        name="lcdc-small", space="taef2", y_stride=2, encoder_channels=128, latent_channels=96,
        hyper_channels=96, unet_channels=64, channel_mults=(1, 2, 2), context_mults=(1, 2, 2),
        attention_levels=(2,), attention_head_channels=32, default_steps=2, top_fraction=0.5,
        space_mean=TAEF2_MEAN, space_std=TAEF2_STD, scale_max=64.0,
    ),
    # The paper's shapes (256-channel latent), for GPU training.
    "cdc-base": CDCConfig(
        name="cdc-base", encoder_channels=192, latent_channels=256, hyper_channels=192,
        unet_channels=64, channel_mults=(1, 2, 3, 4), context_mults=(1, 2, 3, 4),
        num_res_blocks=2, attention_levels=(3,), attention_head_channels=64, default_steps=8,
    ),
}


def cdc_preset(name: str) -> CDCConfig:
    """The CDC preset ``name``; a ``KeyError`` naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise KeyError(f"unknown CDC preset {name!r}; known: {known}") from None
