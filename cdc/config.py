"""Old name of :mod:`cdc.model_config`, kept as an alias for code outside this repository
(and ``cdc/refine/config.py``, which imports it): ``from cdc.config import CDCConfig`` goes
on working. New code imports :mod:`cdc.model_config`."""

from cdc.model_config import *  # noqa: F401,F403
from cdc.model_config import (  # noqa: F401
    HYPER_FACTOR,
    HYPER_STRIDE,
    LATENT_STRIDE,
    SPACE_GEOMETRY,
    CDCConfig,
    OnSpace,
    config_from_dict,
    config_to_dict,
)
