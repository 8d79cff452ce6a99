"""`cdc export-model`'s options work for every codec, or are refused with one line.

Each registered codec gets a tiny random run (one training step where its trainer is cheap,
else a checkpoint of an untrained network in the trainer's layout), then the CLI exports it
with every option; the exported file must carry each of them. An exporter that does not
name an option as a parameter gets a one-line refusal naming the option and the codec,
never a silent drop (what ``**_ignored`` used to do to ``--tier`` and ``--default-steps``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import make_weights, smooth_image
from PIL import Image
from typer.testing import CliRunner

from cdc.registry import CODECS, entry, resolve
from jobs.cli import app
from zoo import load_codec


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("export-images")
    for i in range(2):
        Image.fromarray(smooth_image(64, 64, seed=i)).save(d / f"{i}.png")
    return d


def _cdc_run(run: Path, images: Path, tmp: Path) -> None:
    from pipeline.training.train_cdc import TrainConfig, Trainer

    Trainer(TrainConfig(model_config="cdc-test", model_id="t", sources=[str(images)], crop=64,
                        max_side=None, workers=0, batch_size=1, steps=1), run).fit(progress=False)


def _diffc_run(run: Path, images: Path, tmp: Path) -> None:
    from pipeline.training.train_diffc import DiffCTrainConfig, DiffCTrainer

    DiffCTrainer(DiffCTrainConfig(model_config="diffc-test", model_id="t", sources=[str(images)],
                                  crop=16, max_side=None, batch_size=1, steps=1),
                 run).fit(progress=False)


def _corrdiff_run(run: Path, images: Path, tmp: Path) -> None:
    from pipeline.training.train_corrdiff import CorrDiffTrainConfig, CorrDiffTrainer

    base = tmp / "base.pt"
    base.write_bytes(make_weights(0))
    cfg = CorrDiffTrainConfig(base_model=str(base), model_id="t", sources=[str(images)],
                              decoder={"head_channels": 8, "head_layers": 1},
                              correction={"correct_last": 1}, crop=64, max_side=None,
                              batch_size=1, steps=1, lpips_weight=0.0, base_storage="reference")
    CorrDiffTrainer(cfg, run).fit(progress=False)


def _refine_run(run: Path, images: Path, tmp: Path) -> None:
    """Its trainer needs an AVIF pair cache: the checkpoint layout, untrained weights."""
    from cdc.refine.model import RefineNet
    from pipeline.training.train_refine import RefineTrainConfig

    cfg = RefineTrainConfig(model_config="refine-test", model_id="t", sources=[str(images)])
    torch.manual_seed(0)
    run.mkdir(parents=True)
    torch.save({"train_config": asdict(cfg), "step": 0,
                "ema": RefineNet(cfg.model_cfg()).state_dict()}, run / "checkpoint.pt")


#: Codecs with a trainer (an entry with none has nothing to export).
TRAINABLE = sorted(c for c in CODECS if entry(c).trainer)
RUNS = {"cdc": _cdc_run, "diffc": _diffc_run, "corrdiff": _corrdiff_run,
        "refine": _refine_run}


def test_every_codec_has_a_tiny_run():
    assert sorted(RUNS) == TRAINABLE, "add a tiny run for the new codec here"


@pytest.fixture(scope="module", params=TRAINABLE)
def run(request, images, tmp_path_factory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp(f"run-{request.param}")
    RUNS[request.param](tmp / "run", images, tmp)
    return request.param, tmp / "run"


def test_every_export_option_reaches_the_weights_file(run, tmp_path):
    codec, run_dir = run
    zoo = tmp_path / "zoo"
    r = CliRunner().invoke(app, [
        "export-model", str(run_dir), "--name", "m", "--zoo-dir", str(zoo), "--half",
        "--description", "tiny run", "--default-steps", "3", "--default-gamma", "0.5",
        "--tier", "preview:steps=1,gamma=0,seed=0", "--family", "fam"])
    assert r.exit_code == 0, r.output
    reg = json.loads((zoo / "models.json").read_text())["m"]
    assert (reg["codec"], reg["family"], reg["description"]) == (codec, "fam", "tiny run")
    loaded = load_codec(str(zoo / reg["file"]))
    assert loaded.codec_id == codec
    assert loaded.decode_defaults() == {"default_steps": 3, "default_gamma": 0.5}
    tiers = loaded.recommended_tiers()
    assert tiers["preview"] == {"steps": 1, "gamma": 0.0, "seed": 0}
    assert "standard" in tiers  # merged over the default table, as for every codec
    obj = torch.load(zoo / reg["file"], map_location="cpu", weights_only=True)
    assert any(v.dtype == torch.float16 for v in obj["state_dict"].values()), "--half dropped"


def test_an_option_an_exporter_does_not_name_is_refused_in_one_line(run, tmp_path,
                                                                    monkeypatch):
    codec, run_dir = run
    module = resolve(entry(codec).trainer)
    calls = []

    def narrow(run_dir, name, zoo_dir=None, half=False, **_ignored):
        calls.append(name)
        return "p.pt"

    monkeypatch.setattr(module, "export", narrow)
    r = CliRunner().invoke(app, ["export-model", str(run_dir), "--name", "m", "--half",
                                 "--tier", "preview:steps=1,gamma=0,seed=0",
                                 "--default-steps", "2"])
    assert r.exit_code != 0 and not calls
    line, = [ln for ln in r.output.splitlines() if ln.strip()]
    assert "--default-steps" in line and codec in line, line
    r = CliRunner().invoke(app, ["export-model", str(run_dir), "--name", "m", "--half"])
    assert r.exit_code == 0 and calls == ["m"], r.output
