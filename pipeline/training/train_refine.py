"""`cdc train` for the refine codec: the conditional denoiser on (original, base decode) pairs.

Objective: the diffusion model's x0 regression, as pixel MSE (weight ``mse_weight``), plus
LPIPS-**VGG** (weight ``rho``) on random windows of a part of each batch. Evaluation
metrics (LPIPS-Alex, DISTS, FID) are never a loss here. Time n is drawn two ways: the
sampler's start (n = N−1, x_N = γ·ε with γ from ``start_gammas``; γ = 0 is the 1-step
`standard` tier) with probability ``p_start``, else uniformly with the forward process
(what the multi-step `high` tier walks through).

A model whose config says ``space: taef2`` trains the same objective on TAEF2 latents
(:mod:`pipeline.training.refine_latents`: the pair shards encoded once): target z, condition zb,
loss the latent MSE (``rho`` must be 0), optionally plus pixel MSE and LPIPS-VGG on the frozen
TAEF2 decoder's output of the prediction (``pixel_weight``, ``pixel_rho``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cdc.diffusion.schedules import NoiseSchedule
from cdc.refine.config import REFINE_CONFIGS, RefineConfig
from cdc.refine.nets import build_net as refine_net
from cdc.weights import half_state, pack_weights
from pipeline.training.discriminator import (
    PatchDiscriminator,
    discriminator_hinge,
    generator_hinge,
)
from pipeline.training.refine_latents import LatentPairs, build_latents
from pipeline.training.refine_pairs import PairCrops, build_cache, read_split
from pipeline.training.trainer import TrainConfigBase, TrainerBase, load_run, training_entry
from zoo.store import ship_weights


@dataclass
class RefineTrainConfig(TrainConfigBase):
    codec: str = "refine"
    model_config: str = "refine-small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    model_id: str = "refine-small"
    zoo_name: str | None = None  # the name `cdc export-model` ships it under by default
    validation_split: str = "configs/validation-split.txt"
    pair_cache: str = "runs/refine-pairs"
    pair_crop: int = 128  # crops cut from each base-coded photo (cached)
    pair_variants: int = 2  # (quality, scale) settings per photo
    pair_crops: int = 3  # crops per setting
    # [low, high] bpp: each base is the codec's own rate search at a log-uniform target rate
    # in that range (the bases the encoder makes, fine-ladder downscales included) instead of
    # random (quality, downscale) settings.
    pair_rates: list[float] | None = None
    # More pair caches the run reads beside ``pair_cache`` (each built by its own config).
    extra_pair_caches: list[str] = field(default_factory=list)
    mse_weight: float = 50.0  # on [-1, 1] pixels: 50·MSE ≈ LPIPS-VGG at ~30 dB
    rho: float = 1.0
    perceptual: str = "lpips-vgg"
    perceptual_window: int = 64
    perceptual_items: int = 4  # items of each batch that get the perceptual term
    # "int8": the loss's VGG16 trunk from the compact copy a lent GPU machine gets
    # (pipeline/metrics/trunk_int8.py); "exact" everywhere else.
    perceptual_trunk: str = "exact"
    perceptual_every: int = 1
    # Latent models only: a loss on the TAEF2 decode of the predicted latent (frozen decoder,
    # ``pixel_items`` items of a batch): pixel MSE (weight ``pixel_weight``, [-1, 1] units)
    # and LPIPS-VGG (``pixel_rho``) against the original crop — what the user sees, grid
    # and all, where the latent MSE cannot tell a decoder artefact from detail.
    pixel_weight: float = 0.0
    pixel_rho: float = 0.0
    pixel_items: int = 4
    # Optional adversarial term (``adv_weight`` > 0): a patch discriminator judges the
    # ``pixel_items`` decoded predictions against their original crops (hinge loss); the
    # refiner gets it from step ``adv_start`` on, after the discriminator has warmed up.
    adv_weight: float = 0.0
    adv_start: int = 0
    adv_lr: float = 2.0e-4
    adv_channels: int = 32
    p_start: float = 0.5
    start_gammas: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.5, 1.0])

    def model_cfg(self) -> RefineConfig:
        d = {**REFINE_CONFIGS[self.model_config].to_dict(), **self.model_overrides,
             "name": self.model_id}
        return RefineConfig.from_dict(d)


def pair_cache_of(cfg: RefineTrainConfig, with_latents: bool = False, workers: int = 1,
                  device: str = "cpu") -> Path:
    """Build (or finish) a config's pair cache, the validation split left out;
    ``with_latents``: encode each new shard's TAEF2 latents right after it (on ``device``);
    ``workers``: processes that make the pairs."""
    exclude = read_split(cfg.validation_split) if cfg.validation_split else set()
    rates = tuple(cfg.pair_rates) if cfg.pair_rates else None
    if rates is not None and len(rates) != 2:
        raise ValueError(f"pair_rates {cfg.pair_rates}: need [low, high] in bpp")
    return build_cache(cfg.sources, cfg.pair_cache, cfg.model_cfg(), exclude=exclude,
                       crop=cfg.pair_crop, variants=cfg.pair_variants, crops=cfg.pair_crops,
                       rates=rates, workers=workers,
                       after_shard=((lambda p: build_latents(p.parent, device=device))
                                    if with_latents else None))


log = logging.getLogger(__name__)

#: Metrics used only to evaluate, never to train (tests/test_configs.py checks configs).
EVALUATION_ONLY = ("lpips-alex", "dists", "fid")


class RefineTrainer(TrainerBase):
    metric_fields = ("loss", "mse", "perceptual", "psnr_gain", "grad_norm", "lr")

    def __init__(self, cfg: RefineTrainConfig, run_dir: str | Path, device: str = "cpu",
                 bf16: bool = False, batch_size: int | None = None):
        super().__init__(cfg, run_dir, device, bf16, batch_size)
        if cfg.perceptual in EVALUATION_ONLY:
            raise ValueError(f"{cfg.perceptual} is an evaluation metric, never a loss")
        self.mcfg = cfg.model_cfg()
        self.latent = self.mcfg.space == "taef2"
        if self.latent and cfg.rho > 0:
            raise ValueError("a latent refine model trains on the latent MSE only: set rho: 0")
        self.model = refine_net(self.mcfg).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.schedule = NoiseSchedule(self.mcfg.schedule, self.mcfg.train_timesteps)
        # A latent model's adversarial term judges the TAEF2 decode too.
        self.pixel_loss = (cfg.pixel_weight > 0 or cfg.pixel_rho > 0
                           or (cfg.adv_weight > 0 and self.latent))
        if self.pixel_loss and not self.latent:
            raise ValueError("pixel_weight / pixel_rho are for latent refine models (a pixel "
                             "model's loss is in pixels already: mse_weight, rho)")
        self.perc = None
        if cfg.rho > 0 or cfg.pixel_rho > 0:
            from pipeline.metrics.lpips import LPIPS

            self.perc = LPIPS({"lpips-vgg": "vgg"}[cfg.perceptual],
                              trunk=cfg.perceptual_trunk).to(self.device)
        self.space = None
        if self.pixel_loss:  # its own column (an older run's metrics.csv keeps its header)
            self.metric_fields = (*type(self).metric_fields, "pixel_mse")
            from zoo.components import load_space

            self.space = load_space("taef2").to(self.device)  # frozen: no parameter trains
        self.disc = None
        if cfg.adv_weight > 0:
            self.metric_fields = (*self.metric_fields, "adv_g", "adv_d")
            self.disc = PatchDiscriminator(cfg.adv_channels).to(self.device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.adv_lr,
                                             betas=(0.5, 0.999))
        self.rng = random.Random(cfg.seed)
        self._start()

    def extra_state(self) -> dict[str, Any]:
        if self.disc is None:
            return {}
        return {"disc": self.disc.state_dict(), "disc_opt": self.disc_opt.state_dict()}

    def load_extra_state(self, ck: dict[str, Any]) -> None:
        """The discriminator and its optimizer, when the checkpoint has them (a parent
        trained without the adversarial term has not: the discriminator starts fresh)."""
        if self.disc is not None and "disc" in ck:
            self.disc.load_state_dict(ck["disc"])
            if "disc_opt" in ck:
                self.disc_opt.load_state_dict(ck["disc_opt"])

    def load_relay_state(self, ck: dict[str, Any]) -> None:
        self.load_extra_state(ck)  # a relay keeps the discriminator, not its optimizer

    def check_checkpoint(self, ck: dict[str, Any], path: Path) -> None:
        if ck["train_config"].get("model_config") != self.cfg.model_config:
            raise ValueError(f"{path}: checkpoint is for "
                             f"{ck['train_config'].get('model_config')!r}")

    def dataset(self, seed: int) -> PairCrops:
        """The cached pairs; built here first unless a builder (``python -m
        pipeline.training.train_refine CONFIG``) is filling the cache beside the run, whose new
        shards the loop takes in as they appear."""
        cfg = self.cfg
        if not any(Path(cfg.pair_cache).glob("shard-*.npz")):
            pair_cache_of(cfg)
        folders = [cfg.pair_cache, *cfg.extra_pair_caches]
        for extra in cfg.extra_pair_caches:
            if not any(Path(extra).glob("shard-*.npz")):
                raise FileNotFoundError(f"extra pair cache {extra}: no pair shards (its own "
                                        "config builds it: python -m "
                                        "pipeline.training.train_refine CONFIG)")
        if self.latent:
            for folder in folders:
                if not any(Path(folder).glob("latent-*.pt")):
                    build_latents(folder)
            return LatentPairs(folders, seed=seed, pixels=self.pixel_loss)
        return PairCrops(folders, cfg.crop, seed=seed)

    def perceptual_term(self, x0_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        k, win = min(cfg.perceptual_items, x.shape[0]), min(cfg.perceptual_window, x.shape[-1])
        a, b = [], []
        for i in range(k):
            top = self.rng.randint(0, x.shape[-2] - win)
            left = self.rng.randint(0, x.shape[-1] - win)
            a.append(x0_hat[i, :, top:top + win, left:left + win])
            b.append(x[i, :, top:top + win, left:left + win])
        to01 = lambda t: torch.stack(t).clamp(-1, 1).add(1).div(2)  # noqa: E731
        return self.perc(to01(a), to01(b)).mean()

    def train_step(self, batch: Any) -> dict[str, float]:
        cfg, mcfg = self.cfg, self.mcfg
        self.model.train()
        x, base, *pix = (t.to(self.device) for t in batch)
        n_train = mcfg.train_timesteps
        bsz = x.shape[0]
        r0 = (x - base) / mcfg.residual_std
        n = torch.randint(0, n_train, (bsz,), device=self.device)
        start = torch.rand(bsz, device=self.device) < cfg.p_start
        n = torch.where(start, torch.full_like(n, n_train - 1), n)
        eps = torch.randn_like(x)
        x_t = self.schedule.q_sample(r0, n, eps)
        gam = torch.tensor([self.rng.choice(cfg.start_gammas) for _ in range(bsz)],
                           device=self.device)[:, None, None, None]
        x_t = torch.where(start[:, None, None, None], gam * eps, x_t)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(x_t, base, self.schedule.time(n))
        x0_hat = base + mcfg.residual_std * out.float()
        mse = (x0_hat - x).pow(2).mean()
        loss = cfg.mse_weight * mse
        perc = torch.zeros(())
        if cfg.rho > 0 and self.step % cfg.perceptual_every == 0:
            perc = self.perceptual_term(x0_hat, x)
            loss = loss + cfg.rho * perc
        pixel = torch.zeros(())
        k = min(cfg.pixel_items, bsz)
        seen, real = x0_hat[:k], x[:k]  # what the user sees, and the original
        if self.pixel_loss:
            seen, real = self.space.decode_differentiable(x0_hat[:k]), pix[0][:k]
            pixel = (seen - real).pow(2).mean()
            loss = loss + cfg.pixel_weight * pixel
            if cfg.pixel_rho > 0 and self.step % cfg.perceptual_every == 0:
                perc = self.perceptual_term(seen, real)
                loss = loss + cfg.pixel_rho * perc
        adv = {}
        if self.disc is not None:
            adv = self.adversarial_step(seen, real)
            if self.step >= cfg.adv_start:
                loss = loss + cfg.adv_weight * adv.pop("g_loss")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.step_ema()
        self.step += 1
        with torch.no_grad():  # gain over the base on the γ=0 start items (the net's units)
            sel = start & (gam.view(-1) == 0)
            gain = 0.0
            if sel.any():
                e_hat = (x0_hat[sel] - x[sel]).pow(2).mean()
                e_base = (base[sel] - x[sel]).pow(2).mean()
                gain = float(10 * torch.log10(e_base / e_hat.clamp(min=1e-12)))
        return {"loss": float(loss.detach()), "mse": float(mse.detach()),
                "pixel_mse": float(pixel.detach()),
                "adv_g": adv.get("g", 0.0), "adv_d": adv.get("d", 0.0),
                "perceptual": float(perc.detach()), "psnr_gain": gain,
                "grad_norm": float(gnorm), "lr": self.opt.param_groups[0]["lr"]}

    def adversarial_step(self, seen: torch.Tensor, real: torch.Tensor) -> dict[str, Any]:
        """One discriminator update on (real, detached generated) crops, then the
        generator's hinge term through the updated discriminator, its weights frozen so the
        refiner's backward pass leaves them alone."""
        d_loss = discriminator_hinge(self.disc(real.clamp(-1, 1)),
                                     self.disc(seen.detach().clamp(-1, 1)))
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.disc_opt.step()
        self.disc.requires_grad_(False)
        g_loss = generator_hinge(self.disc(seen.clamp(-1, 1)))
        self.disc.requires_grad_(True)
        return {"g_loss": g_loss, "g": float(g_loss.detach()), "d": float(d_loss.detach())}

    def status(self, row: dict[str, Any]) -> str:
        return f"loss {row['loss']:.4f} gain {row['psnr_gain']:+.2f} dB {row['it_s']:.2f} it/s"


def pack_run(run_dir: str | Path, name: str | None = None, half: bool = False,
             decode_defaults: dict[str, Any] | None = None, meta: dict | None = None,
             which: str = "ema") -> tuple[bytes, RefineTrainConfig, int]:
    """A run's (or relay's) weights as refine weights-file bytes, nothing written; ``which``
    is "ema" or "model" (the raw weights, where the checkpoint has them)."""
    ck = load_run(run_dir)
    cfg = RefineTrainConfig(**ck["train_config"])
    mcfg = cfg.model_cfg()
    if decode_defaults:  # default_steps/_gamma, and the bounds chosen on the validation split
        unknown = set(decode_defaults) - {"default_steps", "default_gamma", "bound_db",
                                          "bound_db_noisy"}
        if unknown:
            raise ValueError(f"unknown decode defaults {sorted(unknown)}")
        mcfg = RefineConfig.from_dict({**mcfg.to_dict(), **decode_defaults})
    net = refine_net(mcfg)
    net.load_state_dict({k: v.float() for k, v in ck[which].items()})
    sd = net.state_dict()
    space = None
    if mcfg.space != "pixel":
        from zoo.components import load_space

        space = load_space(mcfg.space)
    meta = {"train_steps": int(ck["step"]), **(meta or {})}
    data = pack_weights("refine", name or cfg.zoo_name or cfg.model_id, mcfg.to_dict(),
                        half_state(sd) if half else sd, meta, space=space)
    return data, cfg, int(ck["step"])


def export_model(run_dir: str | Path, name: str | None = None,
                 zoo_dir: str | Path | None = None, half: bool = False, description: str = "",
                 decode_defaults: dict[str, Any] | None = None,
                 tiers: dict[str, dict[str, Any]] | None = None,
                 extra_meta: dict | None = None) -> Path:
    """A run's EMA weights → a refine weights file in the zoo (tiers and defaults recorded)."""
    cfg = RefineTrainConfig(**load_run(run_dir)["train_config"])
    name = name or cfg.zoo_name or cfg.model_id
    meta = {"crop": cfg.crop, "batch_size": cfg.batch_size, "mse_weight": cfg.mse_weight,
            "rho": cfg.rho, **({"perceptual": cfg.perceptual} if cfg.rho > 0 else {}),
            **({"pixel_weight": cfg.pixel_weight, "pixel_rho": cfg.pixel_rho,
                "pixel_items": cfg.pixel_items, "pixel_perceptual": cfg.perceptual}
               if cfg.pixel_weight > 0 or cfg.pixel_rho > 0 else {}),
            **({"adv_weight": cfg.adv_weight, "adv_start": cfg.adv_start}
               if cfg.adv_weight > 0 else {}),
            "sources": cfg.sources,
            "validation_split": cfg.validation_split, **({"tiers": tiers} if tiers else {}),
            **(extra_meta or {})}
    data, cfg, step = pack_run(run_dir, name, half, decode_defaults, meta)
    params = sum(v.numel() for v in load_run(run_dir)["ema"].values())
    path = ship_weights(data, name, codec="refine", zoo_dir=zoo_dir, entry={
        "config": cfg.model_config, "params": params, "description": description,
        "train_steps": step, **{k: v for k, v in meta.items() if k != "tiers"}})
    if cfg.model_cfg().space == "taef2":  # the torch-free decoder's graphs, kept in step
        try:
            from zoo.onnx_graphs import write_onnx

            write_onnx(name, zoo_dir)
        except ImportError as e:  # the onnx package is a dev extra
            log.warning("%s: no ONNX graphs written (%s); `cdc export-onnx %s` writes them",
                        name, e, name)
    return path


export = export_model  # the registry's name for every codec's exporter
run_training = training_entry(RefineTrainConfig, RefineTrainer, export_model)


if __name__ == "__main__":  # python -m pipeline.training.train_refine CONFIG: build the pair cache
    import logging
    import sys

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    train_cfg = RefineTrainConfig.from_yaml(sys.argv[1])
    latent = train_cfg.model_cfg().space == "taef2"
    built = pair_cache_of(train_cfg, with_latents=latent)
    if latent:
        build_latents(built)  # shards an earlier builder left without latents
