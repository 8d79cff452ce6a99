"""The parts of training that no decode test sees: the γ-start items of the CDC objective,
the λ warm-up switch, the EMA (and that export ships it), and each codec's trainer entry
in the registry (what `cdc train` / `cdc export-model` dispatch to)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cdc.model_config import CDCConfig
from cdc.models import ConditionalDiffusionCompressor
from cdc.objectives import cdc_loss
from cdc.presets import PRESETS
from cdc.registry import CODECS, entry, resolve
from tests.conftest import smooth_image


def _model(config: str, space=None, **overrides) -> ConditionalDiffusionCompressor:
    torch.manual_seed(0)
    cfg = CDCConfig.from_dict({**PRESETS[config].to_dict(), **overrides})
    return ConditionalDiffusionCompressor(cfg, space)


def _record_denoiser(monkeypatch, model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x_t, time input) of every denoiser call; the noise ``cdc_loss`` draws is the last
    ``torch.randn_like`` of x's shape, recorded too."""
    calls: list = []
    forward = model.denoiser.forward
    monkeypatch.setattr(model.denoiser, "forward",
                        lambda x_t, t, ctx: calls.append((x_t.detach(), t.detach())) or
                        forward(x_t, t, ctx))
    return calls


def _record_noise(monkeypatch) -> list[torch.Tensor]:
    drawn: list = []
    randn_like = torch.randn_like
    monkeypatch.setattr(torch, "randn_like",
                        lambda t, *a, **k: drawn.append(randn_like(t, *a, **k)) or drawn[-1])
    return drawn


# -- the γ-start items ----------------------------------------------------------------------
def test_gamma_start_items_start_where_the_sampler_starts(monkeypatch):
    """The first round(top_fraction·B) items are denoised from the sampler's start: top time,
    x_N = γ·ε with γ in [0, 1] (a quarter of them at γ = 0 exactly); the rest are ordinary
    forward-process samples q(x_n | x) at random times."""
    model = _model("cdc-test", top_fraction=0.5).train()
    b, k = 16, 8
    x = torch.from_numpy(np.stack([smooth_image(64, 64, seed=i) for i in range(b)])
                         ).permute(0, 3, 1, 2).float() / 127.5 - 1
    calls, drawn = _record_denoiser(monkeypatch, model), _record_noise(monkeypatch)
    torch.manual_seed(3)
    cdc_loss(model, x, lam=0.01)
    (x_t, t), = calls
    noise = [d for d in drawn if d.shape == x.shape][-1]
    top = model.cfg.train_timesteps - 1
    sched = model.schedule
    assert torch.equal(t[:k], sched.time(torch.full((k,), top)))
    gammas = []
    for i in range(k):
        g = float((x_t[i] * noise[i]).sum() / (noise[i] ** 2).sum())  # x_t = γ·ε: its γ
        assert torch.allclose(x_t[i], g * noise[i], atol=1e-6), f"item {i} is not γ·ε"
        gammas.append(g)
    assert all(g == 0.0 for g in gammas[: k // 4]), gammas
    assert all(0.0 < g <= 1.0 for g in gammas[k // 4:]), gammas
    assert len(set(gammas[k // 4:])) == k - k // 4  # drawn per item
    n = torch.round(t[k:] * model.cfg.train_timesteps).long()
    assert (n < top).any(), "the other items are not all at the top time"
    assert torch.allclose(x_t[k:], sched.q_sample(x[k:], n, noise[k:]), atol=1e-5)


def test_without_top_fraction_every_item_is_a_forward_sample(monkeypatch):
    model = _model("cdc-test", top_fraction=0.0).train()
    x = torch.from_numpy(smooth_image(64, 64)).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = x.repeat(4, 1, 1, 1)
    calls, drawn = _record_denoiser(monkeypatch, model), _record_noise(monkeypatch)
    torch.manual_seed(0)
    cdc_loss(model, x, lam=0.01)
    (x_t, t), = calls
    noise = [d for d in drawn if d.shape == x.shape][-1]
    n = torch.round(t * model.cfg.train_timesteps).long()
    assert torch.allclose(x_t, model.schedule.q_sample(x, n, noise), atol=1e-5)


def test_latent_perceptual_term_sees_only_the_gamma_start_items_on_aligned_windows(monkeypatch):
    """Latent models: LPIPS (+ MSE) compares the frozen decoder's picture of x̂0 on the
    γ-start items only, with the pixel window that lies under the latent window. A denoiser
    that returns the clean latent makes that picture the image itself (TAEF2 is a trained
    autoencoder), so the pixel crop handed over must be the window that matches it best."""
    from zoo import load_space

    space = load_space("taef2")
    model = _model("lcdc-test", space, top_fraction=0.5).train()
    b, k, window, s, side = 4, 2, 4, space.stride, 8
    rng = np.random.default_rng(0)  # 8×8-pixel blocks of random colours: shifts are visible
    blocks = rng.uniform(-0.8, 0.8, (b, 3, side, side)).astype(np.float32)
    image = torch.from_numpy(blocks).repeat_interleave(s, 2).repeat_interleave(s, 3)
    with torch.no_grad():
        x = model.to_model_units(space.encode(image))
    monkeypatch.setattr(model.denoiser, "forward", lambda x_t, t, ctx: x + 0 * x_t)
    seen = []

    def perceptual(decoded, img):
        seen.append((decoded.detach(), img.detach()))
        return decoded.new_zeros(decoded.shape[0])

    torch.manual_seed(1)
    cdc_loss(model, x, lam=0.01, rho=0.5, perceptual=perceptual, image=image, window=window)
    (decoded, img), = seen
    assert decoded.shape == img.shape == (k, 3, window * s, window * s)
    errors = {(top, left): float(((decoded - image[:k, :, top * s:(top + window) * s,
                                                    left * s:(left + window) * s]) ** 2).mean())
              for top in range(side - window + 1) for left in range(side - window + 1)}
    top, left = min(errors, key=errors.get)
    under = image[:k, :, top * s:(top + window) * s, left * s:(left + window) * s]
    assert torch.equal(img, under), "the pixel crop is not the one under the latent window"


# -- λ warm-up and EMA (pipeline/training/train_cdc.py on the shared TrainerBase) -------------
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train-images")
    for i in range(2):
        Image.fromarray(smooth_image(64, 64, seed=i)).save(d / f"img{i}.png")
    return d


def _trainer(image_dir: Path, run: Path, **kw):
    from pipeline.training.train_cdc import TrainConfig, Trainer

    base = dict(model_config="cdc-test", model_id="cdc-test-t", sources=[str(image_dir)],
                crop=64, max_side=None, workers=0, batch_size=2, steps=4, lam_warmup_steps=2,
                lam_warmup=1e-4, lam=0.5, ema_decay=0.9, checkpoint_every=100, log_every=1,
                lr=1e-3)
    base.update(kw)
    return Trainer(TrainConfig(**base), run)


def test_lambda_switches_after_the_warm_up_and_the_ema_follows_then_averages(
        image_dir: Path, tmp_path: Path, monkeypatch):
    import pipeline.training.train_cdc as pt

    t = _trainer(image_dir, tmp_path / "run")
    lams: list[float] = []
    loss = pt.cdc_loss
    monkeypatch.setattr(pt, "cdc_loss", lambda model, x, lam, *a, **k: lams.append(lam) or
                        loss(model, x, lam, *a, **k))
    ema_checks: list[str] = []
    step = t.train_step

    def checked_step(batch):
        before = {k: v.clone() for k, v in t.ema.state_dict().items()}
        warm = t.step < t.cfg.lam_warmup_steps
        out = step(batch)
        model, ema = t.model.state_dict(), t.ema.state_dict()
        for name, _p in t.ema.named_parameters():
            want = model[name] if warm else before[name] + (1 - 0.9) * (model[name] - before[name])
            assert torch.allclose(ema[name], want, atol=1e-6), (t.step, name)
        moved = any(not torch.equal(ema[n], model[n]) for n, _ in t.ema.named_parameters())
        ema_checks.append("average" if moved else "copy")
        return out

    monkeypatch.setattr(t, "train_step", checked_step)
    assert t.fit(progress=False) == 4
    assert lams == [1e-4, 1e-4, 0.5, 0.5]
    assert ema_checks == ["copy", "copy", "average", "average"]
    assert [t.lam_at(s) for s in (0, 1, 2, 3)] == lams
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("lam")
    assert [float(r.split(",")[col]) for r in rows[1:]] == lams

    # export ships the EMA, not the raw weights (they differ after the warm-up)
    from pipeline.training.train_cdc import export_model
    from zoo import load_codec

    t.save()
    path = export_model(tmp_path / "run", "cdc-test-t", zoo_dir=tmp_path / "zoo")
    shipped = load_codec(str(path)).model.state_dict()
    name = next(n for n, p in t.ema.named_parameters() if n.startswith("denoiser.")
                and not torch.equal(p, t.model.state_dict()[n]))
    assert torch.equal(shipped[name], t.ema.state_dict()[name])
    assert not torch.equal(shipped[name], t.model.state_dict()[name])


def test_update_ema_is_a_lerp_and_copies_buffers_only_when_asked():
    from pipeline.training.trainer import TrainerBase

    tb = TrainerBase.__new__(TrainerBase)
    tb.model, tb.ema = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        tb.model.weight.fill_(1.0)
        tb.ema.weight.fill_(0.0)
        tb.model.running_mean.fill_(5.0)
    tb.update_ema(0.75)
    assert torch.allclose(tb.ema.weight, torch.full((3,), 0.25))
    assert torch.equal(tb.ema.running_mean, torch.zeros(3))
    tb.update_ema(0.0, copy_buffers=True)
    assert torch.equal(tb.ema.weight, tb.model.weight)
    assert torch.equal(tb.ema.running_mean, tb.model.running_mean)


# -- each codec's trainer entry --------------------------------------------------------------
RUN_KW = dict(device="cpu", bf16=False, batch_size=None, max_steps=None, time_limit=None,
              export=None, half=False)
EXPORT_KW = dict(zoo_dir=None, half=False, description="", decode_defaults={}, tiers=None)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_trainer_entry_has_the_entry_points_the_cli_calls(codec):
    from pipeline.training.trainer import TrainConfigBase

    module = resolve(entry(codec).trainer)
    inspect.signature(module.run_training).bind("c.yaml", "run", **RUN_KW)
    inspect.signature(module.export).bind("run", "name", **EXPORT_KW)
    configs = [c for c in vars(module).values() if isinstance(c, type)
               and issubclass(c, TrainConfigBase) and c is not TrainConfigBase
               and c.__module__ == module.__name__]
    assert [c.__dataclass_fields__["codec"].default for c in configs] == [codec], configs


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_trainer_entry_refuses_another_codecs_config(codec, tmp_path: Path):
    other = next(c for c in CODECS if c != codec)
    cfg = tmp_path / "c.yaml"  # (steps 0, no sources: a trainer that took it would not train)
    cfg.write_text(yaml.safe_dump({"codec": other, "steps": 0, "sources": [str(tmp_path)]}))
    with pytest.raises(ValueError, match="codec"):
        resolve(entry(codec).trainer).run_training(cfg, tmp_path / "run", **RUN_KW)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_cli_dispatches_train_and_export_to_the_registered_trainer(codec, tmp_path: Path,
                                                                   monkeypatch):
    from typer.testing import CliRunner

    from jobs.cli import app

    module = resolve(entry(codec).trainer)
    calls = []
    monkeypatch.setattr(module, "run_training",
                        lambda cfg, run, **kw: calls.append(("train", Path(cfg), kw)) or "ok")
    monkeypatch.setattr(module, "export",
                        lambda run, name, **kw: calls.append(("export", name, kw)) or "p.pt")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"codec": codec}))
    r = CliRunner().invoke(app, ["train", str(cfg), "--run-dir", str(tmp_path / "r"),
                                 "--max-steps", "3"])
    assert r.exit_code == 0, r.output
    assert calls == [("train", cfg, {**RUN_KW, "max_steps": 3})]
    run = tmp_path / "r"
    run.mkdir()
    torch.save({"train_config": {"codec": codec}, "step": 1, "ema": {}}, run / "checkpoint.pt")
    r = CliRunner().invoke(app, ["export-model", str(run), "--name", "m"])
    assert r.exit_code == 0, r.output
    assert calls[-1][:2] == ("export", "m")
