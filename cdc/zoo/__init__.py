"""Model zoo: named configs, shipped weights and loading by name, path or URL."""

from cdc.zoo.configs import CONFIGS, get_config
from cdc.zoo.loader import CODEC_CLASSES, codec_from_bytes, load_codec
from cdc.zoo.weights import LoadedModel, load_weights, registry, sha256_hex, weights_bytes

__all__ = ["CODEC_CLASSES", "CONFIGS", "codec_from_bytes", "load_codec", "LoadedModel", "get_config", "load_weights", "registry", "sha256_hex",
           "weights_bytes"]
