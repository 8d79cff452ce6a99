"""The latent refine model's training data and trainer: pair shards → TAEF2 latents → a run
→ an exported model the codec loads (tiny sizes; the shipped TAEF2 weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smooth_image

from pipeline.training.refine_latents import LatentPairs, build_latents, latent_path
from pipeline.training.train_refine import RefineTrainConfig, RefineTrainer, export_model
from zoo import load_codec, load_space


def _shard(folder, k: int, n: int = 6, crop: int = 32) -> None:
    rng = np.random.default_rng(k)
    x = np.stack([smooth_image(crop, crop, seed=k * 10 + i) for i in range(n)])
    base = np.clip(x.astype(int) + rng.integers(-12, 13, x.shape), 0, 255).astype(np.uint8)
    np.savez(folder / f"shard-{k:04d}.npz", x=x, base=base, bpp=np.full(n, 0.2))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    _shard(folder, 0)
    assert build_latents(folder, load_space("taef2")) == 1
    assert build_latents(folder) == 0  # resumable: finished shards are kept
    return folder


def test_latents_are_the_taef2_encodings_of_the_pairs(pairs):
    d = torch.load(latent_path(pairs / "shard-0000.npz"), weights_only=True)
    arr = np.load(pairs / "shard-0000.npz")
    x = torch.from_numpy(arr["x"][:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    want = load_space("taef2").encode(x)
    assert d["z"].shape == (6, 32, 4, 4) and d["z"].dtype == torch.float16
    assert (d["z"][:2].float() - want).abs().max() < 0.01
    assert (d["z"] - d["zb"]).float().abs().mean() > 0.01  # the base differs from the original


def test_a_run_takes_in_new_shards_and_never_flips_latents(pairs, tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    for f in pairs.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    data = LatentPairs(folder, seed=1)
    assert data.pairs == 6 and len(data) > 10**6  # draws, not one pass over the pairs
    _shard(folder, 1, n=4)
    build_latents(folder)
    data.refresh()
    assert data.pairs == 10
    seen = set()
    for i in range(200):
        a, b = data[i]
        j = [k for k in range(data.pairs) if torch.equal(a, data.z[k].float())]
        assert len(j) == 1 and torch.equal(b, data.zb[j[0]].float())  # as cached, paired
        seen.add(j[0])
    assert len(seen) == 10  # every pair is drawn


def test_a_latent_run_trains_exports_and_decodes(pairs, tmp_path):
    cfg = RefineTrainConfig(model_config="refine-latent-test", model_id="tl",
                            sources=[str(pairs)], pair_cache=str(pairs), rho=0.0,
                            batch_size=4, steps=4, crop=32, checkpoint_every=2,
                            log_every=1, mse_weight=1.0, lr=1e-2, workers=0)
    trainer = RefineTrainer(cfg, tmp_path / "run")
    trainer.fit(progress=False)
    assert trainer.step == 4
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 5 and float(rows[-1].split(",")[2]) > 0
    zoo = tmp_path / "zoo"
    path = export_model(tmp_path / "run", "tl", zoo_dir=zoo, half=True)
    codec = load_codec(str(path)).with_rate(quality=40)
    assert codec.space is not None and codec.space.name == "taef2"
    img = smooth_image(48, 64, seed=3)
    data = codec.compress(img)
    assert np.asarray(codec.decompress(data)).shape == (48, 64, 3)


def test_a_latent_model_refuses_a_perceptual_loss(pairs, tmp_path):
    cfg = RefineTrainConfig(model_config="refine-latent-test", model_id="tl",
                            sources=[str(pairs)], pair_cache=str(pairs), rho=1.0)
    with pytest.raises(ValueError, match="latent MSE"):
        RefineTrainer(cfg, tmp_path / "run")


def test_pixels_come_with_their_own_latents_unflipped(pairs):
    data = LatentPairs(pairs, seed=2, pixels=True)
    arr = np.load(pairs / "shard-0000.npz")["x"]
    originals = [torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1 for a in arr]
    for i in range(40):
        z, zb, x = data[i]
        assert x.shape == (3, 32, 32) and -1 <= float(x.min()) and float(x.max()) <= 1
        j = [k for k, o in enumerate(originals) if torch.equal(x, o)]
        assert len(j) == 1  # an original crop of the shard, never flipped
        assert torch.equal(z, data.z[j[0]].float()) and torch.equal(zb, data.zb[j[0]].float())
    # why no flips: TAEF2's latent of a flipped crop is not the flipped latent
    space = load_space("taef2")
    with torch.no_grad():
        x = originals[0][None]
        err = (space.encode(x.flip(-1)) - space.encode(x).flip(-1)).abs().mean()
    assert err > 0.05


def test_a_latent_run_with_the_pixel_loss_lowers_it(pairs, tmp_path):
    cfg = RefineTrainConfig(model_config="refine-latent-test", model_id="tp",
                            sources=[str(pairs)], pair_cache=str(pairs), rho=0.0,
                            pixel_weight=1.0, pixel_rho=0.5, pixel_items=2, batch_size=4,
                            steps=12, crop=32, checkpoint_every=100, log_every=1,
                            mse_weight=1.0, lr=1e-2, workers=0)
    trainer = RefineTrainer(cfg, tmp_path / "run")
    trainer.fit(progress=False)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    pix = [float(r["pixel_mse"]) for r in rows]
    assert len(pix) == 12 and all(p > 0 for p in pix)
    assert min(pix[-4:]) < max(pix[:4])  # the decoded prediction moves toward the original
    assert all(float(r["perceptual"]) > 0 for r in rows)  # LPIPS-VGG on the decode
    assert not any(p.requires_grad for p in trainer.space.parameters())  # TAEF2 stays frozen
    with pytest.raises(ValueError, match="latent refine models"):
        RefineTrainer(RefineTrainConfig(model_config="refine-small", pixel_weight=1.0,
                                        sources=[str(pairs)], pair_cache=str(pairs)),
                      tmp_path / "run2")


def test_a_deeper_model_grows_from_a_relay_and_starts_as_its_parent(pairs, tmp_path):
    """`init_from` a relay of the same model config with more blocks (model_overrides): the
    parent's weights load, the new residual blocks start as the identity, so the grown model
    computes exactly what its parent did before it trains."""
    from pipeline.training.trainer import save_relay

    base = dict(model_config="refine-latent-test", sources=[str(pairs)], pair_cache=str(pairs),
                rho=0.0, batch_size=4, crop=32, log_every=1, mse_weight=1.0, lr=1e-2,
                workers=0)
    parent = RefineTrainer(RefineTrainConfig(model_id="p", steps=3, checkpoint_every=3,
                                             **base), tmp_path / "parent")
    parent.fit(progress=False)
    save_relay(tmp_path / "parent", tmp_path / "relay")
    blocks = parent.mcfg.blocks
    grown = RefineTrainer(RefineTrainConfig(
        model_id="g", steps=4, init_from=str(tmp_path / "relay"),
        model_overrides={"blocks": blocks + 2}, **base), tmp_path / "grown")
    grown._start()
    net_p, net_g = parent.ema, grown.ema
    assert len(net_g.body) == len(net_p.body) + 2 and grown.step == 3
    torch.manual_seed(0)
    x, zb, t = torch.randn(2, 32, 6, 5), torch.randn(2, 32, 6, 5), torch.tensor([10, 500])
    with torch.no_grad():
        want = net_p.half().float()(x, zb, t)  # the relay keeps fp16 weights
        got = net_g(x, zb, t)
    assert torch.allclose(got, want, atol=1e-5) and want.abs().max() > 0


def _adv_config(pairs, **kw) -> RefineTrainConfig:
    return RefineTrainConfig(**{**dict(
        model_config="refine-latent-test", model_id="ta", sources=[str(pairs)],
        pair_cache=str(pairs), rho=0.0, adv_weight=0.1, adv_start=2, adv_lr=1e-3,
        pixel_items=2, batch_size=4, steps=4, crop=32, checkpoint_every=4, log_every=1,
        mse_weight=1.0, lr=1e-2, workers=0), **kw})


def test_the_discriminator_learns_to_tell_and_only_the_refiner_gets_the_generator_term(
        pairs, tmp_path):
    trainer = RefineTrainer(_adv_config(pairs), tmp_path / "run")
    assert trainer.pixel_loss  # the adversarial term alone makes a latent run decode
    real = torch.stack([torch.from_numpy(smooth_image(32, 32, seed=s)).permute(2, 0, 1)
                        for s in (1, 2)]).float() / 127.5 - 1
    fake = (real + 0.3 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
            ).clamp(-1, 1)
    d = [trainer.adversarial_step(fake, real)["d"] for _ in range(25)]
    assert d[-1] < d[0] - 0.2  # it learns to tell noisy crops from the originals
    seen = fake.clone().requires_grad_(True)
    out = trainer.adversarial_step(seen, real)
    before = [p.grad.clone() for p in trainer.disc.parameters()]
    out["g_loss"].backward()
    assert seen.grad is not None and float(seen.grad.abs().sum()) > 0
    assert all(torch.equal(b, p.grad) for b, p in zip(before, trainer.disc.parameters()))


def test_an_adversarial_run_keeps_its_discriminator_across_checkpoints_and_relays(
        pairs, tmp_path):
    import csv

    from pipeline.training.trainer import save_relay

    trainer = RefineTrainer(_adv_config(pairs), tmp_path / "run")
    fresh = {k: v.clone() for k, v in trainer.disc.state_dict().items()}
    trainer.fit(progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == 4 and all(float(r["adv_d"]) > 0 for r in rows)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert {"disc", "disc_opt"} <= set(ck)
    assert any(not torch.equal(fresh[k], v) for k, v in ck["disc"].items())  # it trained
    resumed = RefineTrainer(_adv_config(pairs, steps=6), tmp_path / "run")
    assert resumed.step == 4 and all(torch.equal(ck["disc"][k], v)
                                     for k, v in resumed.disc.state_dict().items())
    relay = torch.load(save_relay(tmp_path / "run", tmp_path / "relay"), weights_only=False)
    assert "disc" in relay and "disc_opt" not in relay
    child = RefineTrainer(_adv_config(pairs, init_from=str(tmp_path / "relay"), steps=6),
                          tmp_path / "child")
    assert child.step == 4 and all(torch.equal(ck["disc"][k], v)
                                   for k, v in child.disc.state_dict().items())


def test_several_latent_caches_read_as_one(pairs, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for f in pairs.iterdir():
            (tmp_path / name / f.name).write_bytes(f.read_bytes())
    data = LatentPairs([tmp_path / "a", tmp_path / "b", tmp_path / "a"], seed=0)
    assert data.pairs == 12  # "a" listed twice is read once
    _shard(tmp_path / "b", 1, n=4)
    build_latents(tmp_path / "b")
    data.refresh()
    assert data.pairs == 16
    assert torch.equal(data.z[12], torch.load(tmp_path / "b" / "latent-0001.pt",
                                              weights_only=True)["z"][0])
