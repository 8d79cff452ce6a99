"""Every training config says what it is, and none trains on a metric we report.

LPIPS-Alex, DISTS and FID are evaluation metrics: a loss on them makes their figures
trained-for. Configs that only reproduce models shipped before that rule live in
configs/legacy/ and say so at their top.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cdc.registry import CODECS, entry, resolve

ROOT = Path(__file__).resolve().parents[1] / "configs"
EVALUATION_METRICS = re.compile(r"lpips[-_]?alex|dists|fid", re.IGNORECASE)
LOSS_KEYS = re.compile(r"perceptual|loss|distance|metric", re.IGNORECASE)
CURRENT = sorted(ROOT.glob("*.yaml"))
LEGACY = sorted((ROOT / "legacy").glob("*.yaml"))


def effective_config(path: Path):
    """The config as its codec's trainer reads it (defaults included)."""
    raw = yaml.safe_load(path.read_text())
    module = resolve(entry(raw.get("codec", "cdc")).trainer)
    classes = [v for v in vars(module).values() if isinstance(v, type)
               and hasattr(v, "from_yaml") and v.__module__ == module.__name__]
    assert len(classes) == 1, f"{module.__name__}: one training config class expected"
    return raw, classes[0].from_yaml(path)


@pytest.mark.parametrize("path", CURRENT, ids=[p.name for p in CURRENT])
def test_no_config_trains_on_an_evaluation_metric(path):
    raw, cfg = effective_config(path)
    assert raw.get("codec", "cdc") in CODECS
    for key, value in vars(cfg).items():
        if LOSS_KEYS.search(key) and isinstance(value, str) and EVALUATION_METRICS.search(value):
            weights = [getattr(cfg, k) for k in ("rho", "lpips_weight") if hasattr(cfg, k)]
            assert not any(w > 0 for w in weights), (
                f"{path.name}: {key}: {value} is an evaluation metric, never a loss "
                "(use lpips-vgg, MSE, diffusion or adversarial terms)")


@pytest.mark.parametrize("path", LEGACY, ids=[p.name for p in LEGACY])
def test_legacy_configs_say_so(path):
    assert path.read_text().startswith("# LEGACY:"), f"{path}: must say why it is legacy"
    effective_config(path)  # still loadable, to reproduce or resume the shipped model


def test_the_refine_trainer_refuses_evaluation_metrics(tmp_path):
    from pipeline.train_refine import RefineTrainConfig, RefineTrainer

    cfg = RefineTrainConfig(perceptual="lpips-alex", model_config="refine-test")
    with pytest.raises(ValueError, match="evaluation metric"):
        RefineTrainer(cfg, tmp_path)


def test_the_check_catches_a_config_that_trains_on_lpips_alex(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("codec: cdc\nmodel_config: cdc-test\nrho: 0.5\nperceptual: lpips-alex\n")
    with pytest.raises(AssertionError, match="evaluation metric"):
        test_no_config_trains_on_an_evaluation_metric(bad)
