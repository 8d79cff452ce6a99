"""Training: the loss goes down, resume continues, export loads and codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdc import CDCCodec
from cdc.models import ConditionalDiffusionCompressor
from cdc.objectives import cdc_loss
from cdc.presets import PRESETS
from pipeline.training.train_cdc import TrainConfig, Trainer, export_model
from tests.conftest import smooth_image


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train-images")
    for i in range(4):
        Image.fromarray(smooth_image(80, 96, seed=i)).save(d / f"img{i}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return d


def _config(image_dir: Path, **kw) -> TrainConfig:
    base = dict(model_config="cdc-test", model_id="cdc-test-trained", sources=[str(image_dir)],
                crop=64, max_side=None, workers=0, batch_size=2, steps=6, lam_warmup_steps=2,
                checkpoint_every=3, log_every=2, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = ConditionalDiffusionCompressor(PRESETS["cdc-test"])
    x = torch.from_numpy(smooth_image(64, 64)).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = x.repeat(2, 1, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def loss_at() -> float:
        torch.manual_seed(123)  # same timesteps and noise each evaluation
        with torch.no_grad():
            return float(cdc_loss(model.train(), x, lam=0.01)["loss"])

    before = loss_at()
    for i in range(25):
        torch.manual_seed(i)
        out = cdc_loss(model.train(), x, lam=0.01)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert loss_at() < 0.7 * before


def test_train_resume_and_export(image_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    t = Trainer(_config(image_dir, steps=4), run)
    assert t.fit(progress=False) == 4
    csv_text, ck = (run / "metrics.csv").read_text(), (run / "checkpoint.pt").read_bytes()
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert t.fit(progress=False) == 4  # already done: a no-op, not more steps
    assert t.step == 4 and (run / "checkpoint.pt").read_bytes() == ck
    assert (run / "metrics.csv").read_text() == csv_text
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in weights.items())
    csv = csv_text.splitlines()
    assert csv[0].startswith("step,") and len(csv) >= 3

    t2 = Trainer(_config(image_dir, steps=6), run)  # resumes from the checkpoint
    assert t2.step == 4
    assert t2.fit(progress=False) == 6

    zoo = tmp_path / "zoo"
    path = export_model(run, "cdc-test-trained", zoo_dir=zoo, half=True)
    digest = (zoo / "weights" / "cdc-test-trained.pt.sha256").read_text().split()[0]
    codec = CDCCodec.from_pretrained(str(path), sha256=digest)
    assert codec.model_id == "cdc-test-trained"
    img = smooth_image(40, 50)
    out = codec.decompress(codec.compress(img), steps=2)
    assert out.size == (50, 40)
    reg = (zoo / "models.json").read_text()
    assert digest in reg and '"train_steps": 6' in reg
    # Operating points measured for this model travel in its weights file.
    tiers = {"standard": {"steps": 2, "gamma": 1.0, "seed": 0}}
    path = export_model(run, "cdc-test-tuned", zoo_dir=zoo, tiers=tiers,
                        decode_defaults={"default_steps": 2, "default_gamma": 1.0})
    from zoo import load_codec

    tuned = load_codec(str(path))
    assert (tuned.config.default_steps, tuned.config.default_gamma) == (2, 1.0)
    assert tuned.meta["tiers"] == tiers and tuned.meta["train_steps"] == 6

    # The CLI exports the same run into a rate family (what `--rate` chooses among).
    import json

    from typer.testing import CliRunner

    from jobs.cli import app

    res = CliRunner().invoke(app, ["export-model", str(run), "--name", "cdc-test-rung",
                                   "--zoo-dir", str(zoo), "--family", "test-ladder",
                                   "--tier", "preview:steps=1,gamma=0,seed=0"])
    assert res.exit_code == 0, res.output
    entry = json.loads((zoo / "models.json").read_text())["cdc-test-rung"]
    assert entry["family"] == "test-ladder" and entry["codec"] == "cdc"
    assert load_codec(str(zoo / entry["file"])).meta["tiers"]["preview"]["steps"] == 1
    from zoo.store import update_entry

    assert update_entry("cdc-test-rung", {"rate": {"bpp": 0.1}}, zoo)["family"] == "test-ladder"
    with pytest.raises(ValueError, match="ship_weights"):
        update_entry("cdc-test-rung", {"sha256": "0" * 64}, zoo)
    with pytest.raises(KeyError, match="no model"):
        update_entry("nope", {"family": "x"}, zoo)


def test_unreadable_training_files_are_skipped(image_dir: Path):
    from pipeline.training.image_crops import RandomCrops

    ds = RandomCrops([str(image_dir)], crop=64, samples_per_epoch=3)
    assert len(ds.images) == 4 and ds.skipped and "broken.png" in ds.skipped[0][0]
    assert ds[0].shape == (3, 64, 64) and -1 <= float(ds[0].min()) <= float(ds[0].max()) <= 1


def test_bad_config_key(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("model_config: cdc-test\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_yaml(p)


def test_weights_digest_checks(tmp_path: Path, weights_file: str):
    from cdc import WeightsError

    with pytest.raises(WeightsError, match="does not match"):
        CDCCodec.from_pretrained(weights_file, sha256="0" * 64)
    side = tmp_path / "w.pt"
    side.write_bytes(Path(weights_file).read_bytes())
    Path(str(side) + ".sha256").write_text("f" * 64 + "  w.pt\n")
    with pytest.raises(WeightsError, match="does not match"):
        CDCCodec.from_pretrained(str(side))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(WeightsError, match="junk.pt"):
        CDCCodec.from_pretrained(str(junk))
    with pytest.raises(WeightsError, match="no such weights file"):
        CDCCodec.from_pretrained(str(tmp_path / "missing.pt"))


def test_weights_from_fsspec_url(weights_file: str):
    import fsspec

    with fsspec.open("memory://zoo/w.pt", "wb") as f:
        f.write(Path(weights_file).read_bytes())
    codec = CDCCodec.from_pretrained("memory://zoo/w.pt")
    assert codec.weights_sha256 == CDCCodec.from_pretrained(weights_file).weights_sha256
    assert np.asarray(
        codec.decompress(codec.compress(smooth_image(16, 16)), steps=1)
    ).shape == (16, 16, 3)


def test_a_signal_stops_the_run_with_a_checkpoint(image_dir: Path, tmp_path: Path):
    """SIGTERM (how a session's end stops a relay run) ends after the step, checkpointed."""
    import os
    import signal

    run = tmp_path / "run"
    t = Trainer(_config(image_dir, steps=50, checkpoint_every=100), run)
    step = t.train_step

    def step_then_signal(x):
        out = step(x)
        if t.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    t.train_step = step_then_signal
    before = signal.getsignal(signal.SIGTERM)  # whatever the process had (Ray installs one)
    assert t.fit(progress=False) == 3
    assert Trainer(_config(image_dir, steps=50), run).step == 3  # the checkpoint has it
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
