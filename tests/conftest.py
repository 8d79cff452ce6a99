"""Shared fixtures: tiny random-init models and generated images (no ../shared data)."""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)
# Never the user's local model cache (zoo.cache), not even in module-scoped fixtures that
# run `cdc archive -m ...` before any per-test fixture; each test also gets its own below.
os.environ["CDC_MODEL_CACHE"] = tempfile.mkdtemp(prefix="cdc-model-cache-")

from s3_fixture import s3_server, s3_url  # noqa: E402, F401  (real S3 for storage tests)

from cdc import CDCCodec  # noqa: E402
from cdc.models import ConditionalDiffusionCompressor  # noqa: E402
from cdc.presets import PRESETS  # noqa: E402
from cdc.weights import weights_bytes  # noqa: E402


def make_weights(seed: int = 0, config: str = "cdc-test", **overrides) -> bytes:
    """Bytes of a random-init (but update()d) weights file."""
    torch.manual_seed(seed)
    cfg = PRESETS[config]
    if overrides:
        from cdc.model_config import CDCConfig

        cfg = CDCConfig.from_dict({**cfg.to_dict(), **overrides})
    model = ConditionalDiffusionCompressor(cfg).eval()
    with torch.no_grad():  # zero-initialised output layers would make every decode flat grey
        for p in model.denoiser.parameters():
            if not p.any():
                p.normal_(0, 0.05)
        model.g_a[-1].weight.mul_(40.0)  # spread the latent so symbols are not all zero
    model.update()
    return weights_bytes(model, cfg.name)


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("weights") / "cdc-test.pt"
    path.write_bytes(make_weights(0))
    return str(path)


@pytest.fixture(scope="session")
def other_weights_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("weights2") / "cdc-test-other.pt"
    path.write_bytes(make_weights(1))
    return str(path)


@pytest.fixture(scope="session")
def codec(weights_file) -> CDCCodec:
    return CDCCodec.from_pretrained(weights_file)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A natural-ish test image: smooth gradients plus a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([
        128 + 100 * np.sin(xx / max(w, 1) * 3 + seed),
        128 + 100 * np.cos(yy / max(h, 1) * 2),
        128 + 60 * np.sin((xx + yy) / 17.0),
    ], axis=-1)
    img = base + rng.normal(0, 8, size=base.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def image() -> np.ndarray:
    return smooth_image(48, 72)


@pytest.fixture(autouse=True)
def _own_model_cache(tmp_path_factory, monkeypatch):
    """Each test gets an empty local model cache (zoo.cache), never the user's."""
    monkeypatch.setenv("CDC_MODEL_CACHE", str(tmp_path_factory.mktemp("model-cache")))


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.timeout(300))


def tile_by_side(h: int, w: int, tile: int, margin: int) -> bool:
    """A stand-in for :func:`cdc.tiling.whole` that tiles whenever a side exceeds one tile
    with its margins: small test images then run the tiled loops (the area rule would run
    them whole), so a test sees seams a broken loop leaves."""
    return h <= tile + 2 * margin and w <= tile + 2 * margin
