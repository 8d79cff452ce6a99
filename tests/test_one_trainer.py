"""One trainer: every codec's `cdc train` is ``training_entry``'s, one EMA policy (codecs
differ by config values), ``warmup_steps`` renamed per meaning (old configs and relays still
load), what resuming restores (and the one line saying what a relay artifact loses), the
lineage a fork records, family configs on the command line, and `cdc export-model`'s
refusals as one line."""

from __future__ import annotations

import ast
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from cdc.registry import CODECS, entry, resolve
from tests.conftest import smooth_image

REPO = Path(__file__).resolve().parents[1]


#: checkpoints/lcdc-small-p/train_config.yaml as committed (written before
#: ``warmup_steps`` became ``lam_warmup_steps``).
OLD_RELAY_CONFIG = """\
aux_lr: 0.001
batch_size: 8
checkpoint_every: 250
codec: cdc
crop: 128
ema_decay: 0.999
grad_clip: 1.0
init_from: checkpoints/lcdc-small-p
lam: 0.3
lam_warmup: 0.02
latent_cache: runs/latent-cache
latent_crop: 16
log_every: 25
lr: 0.0002
max_side: 512
model_config: lcdc-small
model_id: lcdc-small
model_overrides: {}
perceptual: lpips-alex
perceptual_mse: 1.0
perceptual_window: 8
rho: 0.5
seed: 2
sources:
- ../shared/data/train
steps: 40000
warmup_steps: 1500
workers: 0
"""

#: Codecs with something to train (an entry with no ``trainer``: ``cdc train`` refuses it).
TRAINABLE = sorted(c for c in CODECS if entry(c).trainer)


@pytest.mark.parametrize("codec", TRAINABLE)
def test_every_trainer_is_training_entrys(codec):
    run_training = resolve(entry(codec).trainer).run_training
    assert run_training.__qualname__.startswith("training_entry."), run_training


# -- the EMA policy ---------------------------------------------------------------------------
def _decays(cfg, steps=5) -> list[float]:
    from pipeline.training.trainer import TrainerBase

    tb = TrainerBase.__new__(TrainerBase)
    tb.cfg = cfg
    return [tb.ema_decay_at(s) for s in range(steps)]


def test_one_ema_policy_the_codecs_differ_only_by_config_values():
    from pipeline.training.train_cdc import TrainConfig
    from pipeline.training.train_corrdiff import CorrDiffTrainConfig
    from pipeline.training.train_diffc import DiffCTrainConfig

    # CDC: the EMA copies the weights during the λ warm-up, unless told otherwise
    assert _decays(TrainConfig(lam_warmup_steps=3, ema_decay=0.9)) == [0, 0, 0, 0.9, 0.9]
    assert _decays(TrainConfig(lam_warmup_steps=3, ema_decay=0.9, ema_start=1)) == \
        [0, 0.9, 0.9, 0.9, 0.9]
    # DiffC: ramped, so a short run's EMA is not stuck near the init
    assert _decays(DiffCTrainConfig(ema_decay=0.995)) == [min(0.995, (1 + s) / (10 + s))
                                                          for s in range(5)]
    assert _decays(CorrDiffTrainConfig(ema_decay=0.99)) == [0.99] * 5
    # ... and the same config values give any codec the same policy
    assert _decays(CorrDiffTrainConfig(ema_decay=0.995, ema_ramp=True)) == \
        _decays(DiffCTrainConfig(ema_decay=0.995))


def test_a_continued_run_gets_a_fresh_learning_rate_schedule():
    """``lr_schedule_start: N``: warm-up and cosine decay counted from step N (a run continued
    from a parent's step N), not the tail of a schedule counted from 0."""
    from pipeline.training.train_refine import RefineTrainConfig
    from pipeline.training.trainer import TrainerBase

    def lrs(**kw) -> list[float]:
        tb = TrainerBase.__new__(TrainerBase)
        tb.cfg = RefineTrainConfig(lr=1.0, steps=12, lr_warmup_steps=2, lr_decay="cosine",
                                   lr_min_ratio=0.1, **kw)
        return [round(tb.lr_at(s), 4) for s in range(12)]

    whole = lrs()
    assert whole[:3] == [0.5, 1.0, 1.0] and whole[-1] < 0.15
    fresh = lrs(lr_schedule_start=8)  # steps 8..11: warm-up 2, decay over 2
    assert fresh[8:] == [0.5, 1.0, 1.0, round(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)), 4)]
    assert whole[8] < 0.5  # without it, step 8 of 12 would sit low on the cosine
    with pytest.raises(ValueError, match="lr_schedule_start"):
        TrainerBase.lr_at(type("T", (), {"cfg": RefineTrainConfig(steps=5,
                                                                  lr_schedule_start=5)})(), 6)


FROZEN: set[str] = set()  # trainers exempt from the one EMA policy: none


def test_no_trainer_keeps_its_own_ema_policy():
    for path in sorted((REPO / "pipeline" / "training").glob("train_*.py")):
        if path.name in FROZEN:
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "update_ema"]
        assert not calls, f"{path.name}: calls update_ema itself; call self.step_ema()"


# -- warmup_steps ------------------------------------------------------------------------------
def test_warmup_steps_is_read_as_what_it_meant_with_one_deprecation_line(caplog):
    from pipeline.training.train_cdc import TrainConfig
    from pipeline.training.train_diffc import DiffCTrainConfig
    from pipeline.training.training_config import _WARNED

    _WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.training.training_config"):
        cdc = TrainConfig.from_dict({"warmup_steps": 7}, "old.yaml")
        TrainConfig.from_dict({"warmup_steps": 7}, "old.yaml")  # said once per file
        diffc = DiffCTrainConfig.from_dict({"warmup_steps": 7}, "old-diffc.yaml")
    assert (cdc.lam_warmup_steps, cdc.ema_start, cdc.lr_warmup_steps) == (7, 7, 0)
    assert diffc.lr_warmup_steps == 7
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "'lam_warmup_steps'" in lines[0] and "'lr_warmup_steps'" in lines[1]
    with pytest.raises(ValueError, match="keep 'lam_warmup_steps'"):
        TrainConfig.from_dict({"warmup_steps": 7, "lam_warmup_steps": 8})
    assert not hasattr(TrainConfig(), "warmup_steps")
    # a relay's config written before the rename (checkpoints/lcdc-small-p, in the history
    # since its removal from the tree) still loads
    old = yaml.safe_load(OLD_RELAY_CONFIG)
    assert "warmup_steps" in old
    assert TrainConfig.from_dict(old).lam_warmup_steps == old["warmup_steps"]


# -- resuming: checkpoint, relay, lineage -------------------------------------------------------
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("one-trainer-images")
    for i in range(2):
        Image.fromarray(smooth_image(64, 64, seed=i)).save(d / f"img{i}.png")
    return d


def _trainer(image_dir: Path, run: Path, **kw):
    from pipeline.training.train_cdc import TrainConfig, Trainer

    base = dict(model_config="cdc-test", model_id="cdc-test-t", sources=[str(image_dir)],
                crop=64, max_side=None, workers=0, batch_size=2, steps=2, lam_warmup_steps=1,
                lam=0.5, checkpoint_every=100, log_every=1, lr=1e-3)
    return Trainer(TrainConfig(**{**base, **kw}), run)


def _lost_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "lost are" in r.getMessage()]


def test_resume_restores_the_optimizer_or_says_what_a_relay_loses(image_dir, tmp_path, caplog):
    from pipeline.training.trainer import load_run, save_relay

    parent = _trainer(image_dir, tmp_path / "run")
    assert parent.fit(progress=False) == 2
    moments = parent.opt.state_dict()["state"]
    relay = save_relay(tmp_path / "run", tmp_path / "relay").parent
    with caplog.at_level(logging.WARNING, logger="pipeline.training.trainer"):
        full = _trainer(image_dir, tmp_path / "a", init_from=str(tmp_path / "run"))
    assert not _lost_lines(caplog)
    got = full.opt.state_dict()["state"]
    assert got.keys() == moments.keys() and all(
        torch.equal(got[k]["exp_avg"], moments[k]["exp_avg"]) for k in moments)
    assert full.aux_opt.state_dict()["state"]  # CDC's second optimizer too
    assert full.lineage == []  # the same config: a continuation, not a fork

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.training.trainer"):
        fork = _trainer(image_dir, tmp_path / "b", steps=3, lam=2.0, init_from=str(relay))
    lost, = _lost_lines(caplog)
    assert "optimizer moments" in lost and "raw weights" in lost and str(relay) in lost
    assert fork.step == 2 and not fork.opt.state_dict()["state"]
    # the fork records where it came from, and its relay carries that on
    (step_entry,) = fork.lineage
    assert step_entry["until_step"] == 2 and step_entry["train_config"]["lam"] == 0.5
    assert fork.fit(progress=False) == 3
    relay_b = save_relay(tmp_path / "b", tmp_path / "relay-b").parent
    assert load_run(relay_b)["lineage"] == fork.lineage
    again = _trainer(image_dir, tmp_path / "c", steps=3, lam=2.0, init_from=str(relay_b))
    assert again.lineage == fork.lineage  # resuming with the same config adds nothing


# -- the command line ----------------------------------------------------------------------------
def test_cdc_train_takes_a_rung_of_a_family_config(tmp_path, monkeypatch):
    from jobs.cli import app

    module = resolve(entry("cdc").trainer)
    calls = []
    monkeypatch.setattr(module, "run_training",
                        lambda cfg, run, **kw: calls.append(str(cfg)) or "ok")
    fam = tmp_path / "fam.yaml"
    fam.write_text("model_config: cdc-test\nrungs:\n  q1: {lam: 3.0}\n  q2: {lam: 1.0}\n")
    run = ["--run-dir", str(tmp_path / "r")]
    assert CliRunner().invoke(app, ["train", str(fam), "--rung", "q2", *run]).exit_code == 0
    assert CliRunner().invoke(app, ["train", f"{fam}#q1", *run]).exit_code == 0
    assert calls == [f"{fam}#q2", f"{fam}#q1"]
    r = CliRunner().invoke(app, ["train", str(fam), *run])
    assert r.exit_code == 1 and "rungs: q1, q2" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_export_model_refuses_in_one_line_when_an_exporter_raises(tmp_path, monkeypatch):
    from jobs.cli import app

    module = resolve(entry("corrdiff").trainer)

    def over_the_limit(run, name, **kw):
        raise ValueError("corrdiff weights are 21.9 MiB, over the 16 MiB limit (try --half)")

    monkeypatch.setattr(module, "export", over_the_limit)
    run = tmp_path / "r"
    run.mkdir()
    torch.save({"train_config": {"codec": "corrdiff"}, "step": 1, "ema": {}},
               run / "checkpoint.pt")
    r = CliRunner().invoke(app, ["export-model", str(run), "--name", "m"])
    assert r.exit_code == 1, r.output  # README: 1 input, 2 usage
    assert r.output.strip().splitlines() == [
        f"error: {run}: cannot export: corrdiff weights are 21.9 MiB, over the 16 MiB limit "
        "(try --half)"]
