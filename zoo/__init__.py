"""The model zoo: shipped weights, loading by name, path or URL, digest checks.

The only package that reads model files (``cdc`` turns bytes into models). Shipped
models live in ``zoo/weights/`` with ``zoo/models.json`` as the registry; the frozen
pretrained components (TAEF2) beside them, checked by sha256 (NOTICE).
"""

from zoo.components import component_bytes, component_states, load_space
from zoo.loader import LoadedModel, codec_from_bytes, load_codec, load_weights
from zoo.store import read_verified_bytes, registry, sha256_hex, ship_weights, shipped_by_digest

__all__ = ["LoadedModel", "codec_from_bytes", "component_bytes", "component_states", "load_codec",
           "load_space", "load_weights", "read_verified_bytes", "registry", "sha256_hex",
           "ship_weights", "shipped_by_digest"]
