"""Model zoo: named configs, shipped weights and loading by name, path or URL."""

from cdc.zoo.configs import CONFIGS, get_config
from cdc.zoo.weights import LoadedModel, load_weights, registry, sha256_hex, weights_bytes

__all__ = ["CONFIGS", "LoadedModel", "get_config", "load_weights", "registry", "sha256_hex",
           "weights_bytes"]
