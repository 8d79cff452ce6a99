"""Named model configurations (untrained shapes); shipped weights name one of these."""

from __future__ import annotations

from cdc.config import CDCConfig

CONFIGS: dict[str, CDCConfig] = {
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
    # The paper's shapes (256-channel latent), for GPU training.
    "cdc-base": CDCConfig(
        name="cdc-base", encoder_channels=192, latent_channels=256, hyper_channels=192,
        unet_channels=64, channel_mults=(1, 2, 3, 4), context_mults=(1, 2, 3, 4),
        num_res_blocks=2, attention_levels=(3,), attention_head_channels=64, default_steps=8,
    ),
}


def get_config(name: str) -> CDCConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(sorted(CONFIGS))}") from None
