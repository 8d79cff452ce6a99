"""`cdc train` for DiffC: fit the unconditional diffusion prior, resumably, and export it.

Objective: DDPM's ε-prediction MSE at uniformly drawn levels (the sum of the
per-step KLs DiffC pays is a weighted version of it). AdamW, gradient clipping,
EMA weights (exported), a ``metrics.csv`` log and a ``checkpoint.pt`` that a
second run with the same ``--run-dir`` resumes from (or a committed relay artifact,
``init_from``). A latent prior (``space: taef2``) trains on the cached latents of the
sources (:mod:`pipeline.training.latent_cache`), standardised to model units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from cdc.diffc.model import DiffCConfig, DiffusionPrior, get_diffc_config, weights_bytes
from pipeline.training.trainer import (
    TrainConfigBase,
    TrainerBase,
    load_run,
    training_entry,
    with_decode_defaults,
)
from zoo.components import load_space


@dataclass
class DiffCTrainConfig(TrainConfigBase):
    #: ``warmup_steps`` was DiffC's LR warm-up (CDC's λ warm-up had the same name).
    renamed_keys: ClassVar[dict[str, str]] = {"warmup_steps": "lr_warmup_steps"}

    codec: str = "diffc"
    model_config: str = "diffc-small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    model_id: str = "diffc-small"
    crop: int = 32
    batch_size: int = 16
    steps: int = 100_000
    lr: float = 3e-4
    lr_warmup_steps: int = 200
    ema_decay: float = 0.995
    ema_ramp: bool = True

    def model_cfg(self) -> DiffCConfig:
        base = get_diffc_config(self.model_config).to_dict()
        base.update(self.model_overrides)
        base["name"] = self.model_id
        return DiffCConfig.from_dict(base)


def prior_for(cfg: DiffCConfig) -> DiffusionPrior:
    """A fresh prior on the space its config names (the frozen space loaded from the zoo)."""
    return DiffusionPrior(cfg, None if cfg.space == "pixel" else load_space(cfg.space))


def prior_from_run(run_dir: str | Path, name: str | None = None
                   ) -> tuple[DiffusionPrior, dict[str, Any], DiffCTrainConfig]:
    """(EMA prior, checkpoint dict, train config) of a run's checkpoint.pt or committed
    relay artifact; the frozen space comes from the zoo, not the file."""
    ck = load_run(run_dir)
    cfg = DiffCTrainConfig.from_dict(ck["train_config"])
    prior = prior_for(DiffCConfig.from_dict({**cfg.model_cfg().to_dict(),
                                             "name": name or cfg.zoo_name or cfg.model_id}))
    frozen = {k: v for k, v in prior.state_dict().items() if k.startswith("space.")}
    prior.load_state_dict({**frozen, **{k: v.float() if v.is_floating_point() else v
                                        for k, v in ck["ema"].items()}})
    return prior.eval(), ck, cfg


class DiffCTrainer(TrainerBase):
    metric_fields = ("loss", "grad_norm", "lr")
    csv_digits = 6

    def __init__(self, cfg: DiffCTrainConfig, run_dir: str | Path, device: str = "cpu",
                 bf16: bool = False, batch_size: int | None = None):
        super().__init__(cfg, run_dir, device, bf16, batch_size)
        self.model = prior_for(cfg.model_cfg()).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self._start()

    def dataset(self, seed: int):
        return self.space_dataset(seed)

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        self.model.train()
        x = self.model.to_model_units(x.to(self.device, non_blocking=True))
        lr = self.opt.param_groups[0]["lr"]  # set by the shared schedule (TrainerBase.set_lr)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model.loss(x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.step_ema()  # ema_ramp: short runs are not stuck near the init
        self.step += 1
        return {"loss": float(loss.detach()), "grad_norm": float(gnorm), "lr": lr}


def export(run_dir: str | Path, name: str | None = None, zoo_dir: str | Path | None = None,
           half: bool = False, description: str = "", extra_meta: dict | None = None,
           decode_defaults: dict[str, Any] | None = None,
           tiers: dict[str, dict[str, Any]] | None = None) -> Path:
    """EMA weights of a run → weights file + sha256 + registry entry (codec "diffc").

    ``decode_defaults`` (``default_steps``/``default_gamma``) and ``tiers`` record the
    operating points measured for this model, as for every codec's exporter.
    """
    from zoo.store import ship_weights

    prior, ck, cfg = prior_from_run(run_dir, name)
    name = name or cfg.zoo_name or cfg.model_id
    description = description or cfg.description
    if decode_defaults:  # decode-time fields only: the network is the same
        prior.cfg = DiffCConfig.from_dict(with_decode_defaults(prior.cfg.to_dict(),
                                                               decode_defaults))
    latent = prior.cfg.space != "pixel"  # trained on cached latent crops: say their pixels
    meta = {"train_steps": int(ck["step"]),
            "crop": cfg.latent_crop * prior.space.stride if latent else cfg.crop,
            "batch_size": cfg.batch_size, "sources": cfg.sources,
            **({"tiers": tiers} if tiers else {}), **(extra_meta or {})}
    data = weights_bytes(prior.eval(), name, half=half, meta=meta)
    return ship_weights(data, name, codec="diffc", zoo_dir=zoo_dir, entry={
        "config": cfg.model_config,
        "params": sum(p.numel() for n, p in prior.named_parameters() if not n.startswith("space.")),
        "description": description or "DiffC: unconditional diffusion prior, progressive streams",
        **meta})


export_diffc = export  # the name bench/ and older notes use
run_training = training_entry(DiffCTrainConfig, DiffCTrainer, export)
