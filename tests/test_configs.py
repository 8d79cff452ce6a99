"""Every training config says what it is, and none trains on a metric we report.

LPIPS-Alex, DISTS and FID are evaluation metrics: a loss on them makes their figures
trained-for. Configs that only reproduce models shipped before that rule live in
configs/legacy/ and say so at their top. A family config (``rungs:``) is checked rung by
rung; every config file a config, the README or docs/ names exists, and every old config
path still loads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cdc.registry import CODECS, codec_of, entry, resolve
from pipeline.training.training_config import read_config, rung_names, split_rung

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "configs"
EVALUATION_METRICS = re.compile(r"lpips[-_]?alex|dists|fid", re.IGNORECASE)
LOSS_KEYS = re.compile(r"perceptual|loss|distance|metric", re.IGNORECASE)


def specs(folder: Path) -> list[str]:
    """Every config a folder holds: ``FILE`` for one model, ``FILE#RUNG`` for each rung."""
    return [f"{p}#{r}" if r else str(p) for p in sorted(folder.glob("*.yaml"))
            for r in (rung_names(p) or [None])]


CURRENT = specs(ROOT) + specs(ROOT / "gpu")  # gpu/: for a lent GPU machine
LEGACY = specs(ROOT / "legacy")
#: Every config path there has been: each must still load (tests/test_configs.py).
OLD_PATHS = ["cdc-small.yaml", "corrdiff-small.yaml", "diffc-small.yaml", "ldiffc-small.yaml",
             "refine-small.yaml", "lcdc-small.yaml", "lcdc-small-l01.yaml",
             "lcdc-small-l10.yaml", "legacy/lcdc-small-p.yaml", "legacy/lcdc-small-l01p.yaml",
             "legacy/lcdc-small-l10p.yaml", "legacy/lcdc-small-l30p.yaml",
             "legacy/lcorrdiff-q2.yaml", "legacy/lcorrdiff-q3.yaml", "legacy/lcorrdiff-q4.yaml"]


def _id(spec: str) -> str:
    return spec.split("/configs/")[-1]


def effective_config(spec: str | Path):
    """The config as its codec's trainer reads it (defaults included); ``FILE#RUNG`` ok."""
    raw = read_config(spec)
    module = resolve(entry(codec_of(raw)).trainer)
    classes = [v for v in vars(module).values() if isinstance(v, type)
               and hasattr(v, "from_yaml") and v.__module__ == module.__name__]
    assert len(classes) == 1, f"{module.__name__}: one training config class expected"
    return raw, classes[0].from_yaml(spec)


@pytest.mark.parametrize("path", CURRENT, ids=[_id(p) for p in CURRENT])
def test_no_config_trains_on_an_evaluation_metric(path):
    raw, cfg = effective_config(path)
    path = Path(split_rung(path)[0])
    assert codec_of(raw) in CODECS
    for key, value in vars(cfg).items():
        if LOSS_KEYS.search(key) and isinstance(value, str) and EVALUATION_METRICS.search(value):
            weights = [getattr(cfg, k) for k in ("rho", "lpips_weight") if hasattr(cfg, k)]
            assert not any(w > 0 for w in weights), (
                f"{path.name}: {key}: {value} is an evaluation metric, never a loss "
                "(use lpips-vgg, MSE, diffusion or adversarial terms)")


@pytest.mark.parametrize("path", LEGACY, ids=[_id(p) for p in LEGACY])
def test_legacy_configs_say_so(path):
    file = Path(split_rung(path)[0])
    assert file.read_text().startswith("# LEGACY:"), f"{file}: must say why it is legacy"
    effective_config(path)  # still loadable, to reproduce or resume the shipped model


@pytest.mark.parametrize("old", OLD_PATHS)
def test_every_old_config_path_still_loads(old):
    effective_config(ROOT / old)


CONFIG_NAME = re.compile(r"(?<![\w./-])((?:configs/)?(?:legacy/)?[\w.-]+\.yaml)(#\w+)?")


def _named_configs(path: Path) -> list[tuple[str, str | None]]:
    """(file, rung) of every ``*.yaml`` a text names, comments included."""
    return [(m.group(1), m.group(2)) for m in CONFIG_NAME.finditer(path.read_text())]


TEXTS = sorted(ROOT.rglob("*.yaml")) + [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
                                        REPO / "scripts" / "ship-ladder"]


@pytest.mark.parametrize("text", TEXTS, ids=[str(t.relative_to(REPO)) for t in TEXTS])
def test_every_config_a_text_names_exists(text: Path):
    """``cdc-small.yaml`` once named a phase-2 file that was never written: a name in a
    config (relative to its folder, or to the repo), the README or docs must exist, and a
    ``#RUNG`` must be one of that file's rungs."""
    for name, rung in _named_configs(text):
        if not name.startswith("configs/") and text.suffix == ".md":
            continue  # prose names other YAML (workflows, models.json's neighbours)
        candidates = [REPO / name, text.parent / name, ROOT / name]
        found = next((c for c in candidates if c.exists()), None)
        assert found, f"{text.name} names {name}, which does not exist"
        if rung:
            assert rung[1:] in rung_names(found), f"{text.name}: {name}{rung}: no such rung"


def test_the_name_check_catches_the_phase_2_file_that_was_never_written(tmp_path):
    old = tmp_path / "cdc-small.yaml"  # its comment before the fix
    old.write_text("# Phase 2 (cdc-small-lpips.yaml) resumes the same run with LPIPS on.\n")
    with pytest.raises(AssertionError, match="cdc-small-lpips.yaml, which does not exist"):
        test_every_config_a_text_names_exists(old)


@pytest.mark.parametrize("spec", CURRENT + LEGACY, ids=[_id(p) for p in CURRENT + LEGACY])
def test_a_fork_names_a_config_it_can_be_retrained_from(spec):
    """``fork_of: CONFIG#RUNG@STEP``: retraining from scratch trains that config to STEP."""
    _, cfg = effective_config(spec)
    if cfg.fork_of:
        parent, _, step = cfg.fork_of.rpartition("@")
        assert step.isdigit(), f"{spec}: fork_of {cfg.fork_of!r} needs @STEP"
        effective_config(REPO / parent)


def test_the_loader_catches_a_missing_rung_and_a_rung_without_family(tmp_path):
    fam = tmp_path / "fam.yaml"
    fam.write_text("codec: cdc\nmodel_config: cdc-test\nrungs:\n  a: {lam: 0.1}\n")
    assert read_config(f"{fam}#a")["lam"] == 0.1
    with pytest.raises(ValueError, match="rungs: a"):
        read_config(fam)
    with pytest.raises(ValueError, match="no rung 'b'"):
        read_config(f"{fam}#b")
    one = tmp_path / "one.yaml"
    one.write_text("extends: fam.yaml#a\nseed: 3\n")
    assert read_config(one) == {"codec": "cdc", "model_config": "cdc-test", "lam": 0.1,
                                "seed": 3}
    with pytest.raises(ValueError, match="has no rungs"):
        read_config(f"{one}#a")


def test_the_refine_trainer_refuses_evaluation_metrics(tmp_path):
    from pipeline.training.train_refine import RefineTrainConfig, RefineTrainer

    cfg = RefineTrainConfig(perceptual="lpips-alex", model_config="refine-test")
    with pytest.raises(ValueError, match="evaluation metric"):
        RefineTrainer(cfg, tmp_path)


def test_the_check_catches_a_config_that_trains_on_lpips_alex(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("codec: cdc\nmodel_config: cdc-test\nrho: 0.5\nperceptual: lpips-alex\n")
    with pytest.raises(AssertionError, match="evaluation metric"):
        test_no_config_trains_on_an_evaluation_metric(bad)
