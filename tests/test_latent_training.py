"""Latent CDC training: cached TAEF2 latents, resumable runs, the perceptual phase after
the frozen decoder, relay artifacts and forks (init_from), export and coding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdc.weights import read_weights_dict
from pipeline.training.latent_cache import LatentCrops, build_cache, cache_dir
from pipeline.training.train_cdc import TrainConfig, Trainer, export_model
from pipeline.training.trainer import RELAY_FILE, save_relay
from tests.conftest import smooth_image
from zoo import load_codec, load_space


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("latent-train-images")
    for i in range(3):
        Image.fromarray(smooth_image(136, 160, seed=i)).save(d / f"img{i}.png")
    return d


def _config(image_dir: Path, cache: Path, **kw) -> TrainConfig:
    base = dict(model_config="lcdc-test", model_id="lcdc-test-trained", sources=[str(image_dir)],
                max_side=None, workers=0, batch_size=2, steps=4, lam_warmup_steps=1,
                checkpoint_every=2, log_every=2, lr=1e-3, lam=0.1, latent_cache=str(cache),
                latent_crop=8)
    base.update(kw)
    return TrainConfig(**base)


def test_cache_is_resumable_and_crops_align_with_pixels(image_dir: Path, tmp_path: Path):
    space = load_space("taef2")
    folder = build_cache(str(image_dir), space, tmp_path, max_side=None, limit=2)
    assert len(list(folder.glob("*.npy"))) == 2
    assert build_cache(str(image_dir), space, tmp_path, max_side=None) == folder
    assert len(list(folder.glob("*.npy"))) == 3 and folder == cache_dir(tmp_path, space, None, 128)
    crops = LatentCrops(folder, crop=8, stride=8, pixels=True, max_side=None)
    lat, img = crops[0]
    assert lat.shape == (32, 8, 8) and img.shape == (3, 64, 64)


def test_cache_builder_command(image_dir: Path, tmp_path: Path, monkeypatch, capsys):
    """``python -m pipeline.training.latent_cache`` (how a session rebuilds the cache) runs
    end to end."""
    import sys

    from pipeline.training import latent_cache as latents

    monkeypatch.setattr(sys, "argv", ["latents", str(image_dir), "--root", str(tmp_path),
                                      "--max-side", "0", "--limit", "1"])
    latents.main()
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder.parent == tmp_path and len(list(folder.glob("*.npy"))) == 1


def test_train_perceptual_phase_relay_fork_export(image_dir: Path, tmp_path: Path):
    pytest.importorskip("lpips")
    from pipeline.metrics import fetch

    try:
        fetch.fetch_weights()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"LPIPS weights unavailable: {e}")
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    t = Trainer(_config(image_dir, cache, steps=2), run)
    assert t.fit(progress=False) == 2
    # Phase 2 resumes the same run with the perceptual term after the frozen decoder.
    t2 = Trainer(_config(image_dir, cache, steps=4, rho=0.5, perceptual_window=4), run)
    assert t2.step == 2 and t2.fit(progress=False) == 4
    rows = (run / "metrics.csv").read_text().splitlines()
    assert float(rows[-1].split(",")[5]) > 0  # the perceptual column is live

    relay = save_relay(run, tmp_path / "relay")
    assert relay.name == RELAY_FILE and relay.stat().st_size < 16 << 20
    fork = Trainer(_config(image_dir, cache, steps=6, lam=1.0, init_from=str(relay.parent)),
                   tmp_path / "fork")
    assert fork.step == 4 and fork.fit(progress=False) == 6

    from_relay = export_model(relay.parent, "lcdc-test-relay", zoo_dir=tmp_path / "zoo")
    assert load_codec(str(from_relay)).meta["train_steps"] == 4  # a relay exports like a run
    path = export_model(tmp_path / "fork", "lcdc-test-fork", zoo_dir=tmp_path / "zoo", half=True)
    obj = read_weights_dict(path.read_bytes(), "test")
    assert obj["space"]["name"] == "taef2" and obj["meta"]["train_steps"] == 6
    codec = load_codec(str(path))
    img = smooth_image(48, 72, seed=9)
    out = codec.decompress(codec.compress(img), steps=1, gamma=0.0)
    assert out.size == (72, 48) and np.asarray(out).std() > 0


def test_latent_diffc_trains_on_cached_latents_relays_and_exports(image_dir: Path, tmp_path: Path):
    """DiffC on TAEF2 latents: the same cache, the same relay, a progressive stream."""
    from pipeline.training.train_diffc import DiffCTrainConfig, DiffCTrainer, export

    def cfg(**kw):
        base = dict(model_config="ldiffc-test", model_id="ldiffc-trained",
                    sources=[str(image_dir)], max_side=None, batch_size=2, steps=2,
                    lr_warmup_steps=1, checkpoint_every=2, log_every=1, lr=1e-3,
                    latent_cache=str(tmp_path / "cache"), latent_crop=8)
        base.update(kw)
        return DiffCTrainConfig(**base)

    run = tmp_path / "run"
    t = DiffCTrainer(cfg(), run)
    assert t.fit(progress=False) == 2
    assert len(list((tmp_path / "cache").glob("*/*.npy"))) == 3  # the shared latent cache
    relay = save_relay(run, tmp_path / "relay")
    assert relay.stat().st_size < 16 << 20
    fork = DiffCTrainer(cfg(steps=3, init_from=str(relay.parent)), tmp_path / "fork")
    assert fork.step == 2 and fork.fit(progress=False) == 3
    path = export(tmp_path / "fork", "ldiffc-fork", zoo_dir=tmp_path / "zoo", half=True)
    obj = read_weights_dict(path.read_bytes(), "test")
    assert obj["space"]["name"] == "taef2" and obj["meta"]["train_steps"] == 3
    codec = load_codec(str(path))
    data = codec.compress(smooth_image(40, 48, seed=4))
    offsets = codec.step_offsets(data)
    assert codec.decompress(data, max_bytes=offsets[1]).size == (48, 40)
    assert codec.decompress(data).size == (48, 40)


def test_latent_corrdiff_decoder_trains_against_the_latent(image_dir: Path, tmp_path: Path):
    """CorrDiff on a latent CDC base: the end-to-end decoder learns the TAEF2 latent from the
    shared cache (no LPIPS here), exports with its base, and the codec replays its paths."""
    import torch

    from cdc.models import ConditionalDiffusionCompressor
    from cdc.presets import PRESETS
    from cdc.weights import weights_bytes
    from pipeline.training.train_corrdiff import CorrDiffTrainConfig, CorrDiffTrainer

    torch.manual_seed(0)
    base = ConditionalDiffusionCompressor(PRESETS["lcdc-test"], load_space("taef2")).eval()
    base.update()
    base_path = tmp_path / "lcdc-base.pt"
    base_path.write_bytes(weights_bytes(base, "lcdc-base"))
    cfg = CorrDiffTrainConfig(base_model=str(base_path), model_id="lcorrdiff-trained",
                              sources=[str(image_dir)], max_side=None, batch_size=2, steps=3,
                              checkpoint_every=3, log_every=1, latent_cache=str(tmp_path / "c"),
                              latent_crop=8, decoder={"head_channels": 8, "head_layers": 1},
                              correction={"correct_last": 1, "skip_final": False},
                              base_storage="reference", zoo_dir=str(tmp_path / "zoo"))
    t = CorrDiffTrainer(cfg, tmp_path / "run")
    assert t.fit(progress=False) == 3
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert float(rows[-1].split(",")[rows[0].split(",").index("mse")]) > 0
    path = t.export("lcorrdiff-trained")
    assert path.stat().st_size < base_path.stat().st_size  # names its base by digest
    codec = load_codec(str(path))
    assert codec.codec_id == "corrdiff" and codec.config.space == "taef2"
    img = smooth_image(40, 48, seed=5)
    (data, recons), = codec.compress_with_reconstructions([img])
    assert codec.decompress(data).size == (48, 40)
    # A committed relay artifact (no checkpoint.pt) exports the same trained decoder.
    from pipeline.training.train_corrdiff import export
    from pipeline.training.trainer import save_relay

    save_relay(tmp_path / "run", tmp_path / "relay")
    again = export(tmp_path / "relay", "lcorrdiff-relayed", zoo_dir=tmp_path / "zoo")
    ema = torch.load(tmp_path / "relay" / "relay.pt", weights_only=False)["ema"]
    got = torch.load(again, weights_only=False)
    assert got["meta"]["train_steps"] == 3
    for k, v in ema.items():
        torch.testing.assert_close(got["state_dict"]["corrdiff.decoder." + k].float(), v.float())
