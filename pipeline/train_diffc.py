"""`cdc train` for DiffC: fit the unconditional diffusion prior, resumably, and export it.

Objective: DDPM's ε-prediction MSE at uniformly drawn levels (the sum of the
per-step KLs DiffC pays is a weighted version of it). AdamW, gradient clipping,
EMA weights (exported), a ``metrics.csv`` log and a ``checkpoint.pt`` that a
second run with the same ``--run-dir`` resumes from.
"""

from __future__ import annotations

import copy
import csv
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from cdc.diffc.model import DiffCConfig, DiffusionPrior, get_diffc_config, weights_bytes
from pipeline.data import RandomCrops


@dataclass
class DiffCTrainConfig:
    codec: str = "diffc"
    model_config: str = "diffc-small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    model_id: str = "diffc-small"
    sources: list[str] = field(default_factory=lambda: ["../shared/data/train"])
    crop: int = 32
    max_side: int | None = 512
    workers: int = 0
    batch_size: int = 16
    steps: int = 100_000
    lr: float = 3e-4
    warmup_steps: int = 200  # linear LR warm-up
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    checkpoint_every: int = 250
    log_every: int = 25
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: str | Path) -> DiffCTrainConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        names = set(cls.__dataclass_fields__)
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(names)}")
        cfg = cls(**raw)
        if cfg.codec != "diffc":
            raise ValueError(f"{path}: codec is {cfg.codec!r}, not 'diffc'")
        return cfg

    def model_cfg(self) -> DiffCConfig:
        base = get_diffc_config(self.model_config).to_dict()
        base.update(self.model_overrides)
        base["name"] = self.model_id
        return DiffCConfig.from_dict(base)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class DiffCTrainer:
    def __init__(self, cfg: DiffCTrainConfig, run_dir: str | Path, device: str = "cpu",
                 bf16: bool = False, batch_size: int | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        self.bf16 = bf16
        if batch_size:
            cfg.batch_size = batch_size
        torch.manual_seed(cfg.seed)
        self.model = DiffusionPrior(cfg.model_cfg()).to(self.device)
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.step = 0
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        if self.ckpt_path.exists():
            self._load(self.ckpt_path)

    def _load(self, path: Path) -> None:
        ck = torch.load(path, map_location=self.device, weights_only=False)
        if ck["train_config"]["model_config"] != self.cfg.model_config:
            raise ValueError(f"{path}: checkpoint is for {ck['train_config']['model_config']!r}")
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["opt"])
        self.step = int(ck["step"])

    def save(self) -> None:
        _atomic_save({"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                      "opt": self.opt.state_dict(), "step": self.step,
                      "train_config": asdict(self.cfg)}, self.ckpt_path)

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        self.model.train()
        x = x.to(self.device, non_blocking=True)
        lr = self.cfg.lr * min(1.0, (self.step + 1) / max(1, self.cfg.warmup_steps))
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model.loss(x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            # Short runs: ramp the decay up so the EMA is not stuck near the init.
            d = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(pm.detach(), 1 - d)
        self.step += 1
        return {"loss": float(loss.detach()), "grad_norm": float(gnorm), "lr": lr}

    def fit(self, max_steps: int | None = None, time_limit: float | None = None) -> int:
        cfg = self.cfg
        target = cfg.steps if max_steps is None else min(cfg.steps, self.step + max_steps)
        if self.step >= target:
            return self.step
        data = RandomCrops(cfg.sources, cfg.crop, samples_per_epoch=10**9, max_side=cfg.max_side,
                           seed=cfg.seed + self.step)
        loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.workers,
                            shuffle=False, drop_last=True, persistent_workers=cfg.workers > 0,
                            pin_memory=self.device.type == "cuda")
        csv_path = self.run_dir / "metrics.csv"
        new_csv = not csv_path.exists()
        fields = ["step", "time", "loss", "grad_norm", "lr", "it_s"]
        t0 = time.time()
        last_t, last_step = t0, self.step
        with open(csv_path, "a", newline="") as fcsv:
            writer = csv.DictWriter(fcsv, fieldnames=fields)
            if new_csv:
                writer.writeheader()
            acc: dict[str, float] = {}
            n_acc = 0
            for x in loader:
                m = self.train_step(x)
                for k, v in m.items():
                    acc[k] = acc.get(k, 0.0) + v
                n_acc += 1
                if self.step % cfg.log_every == 0 or self.step == target:
                    now = time.time()
                    row = {k: v / n_acc for k, v in acc.items()}
                    row.update(step=self.step, time=round(now - t0, 1),
                               it_s=(self.step - last_step) / max(now - last_t, 1e-9))
                    writer.writerow({k: (round(v, 6) if isinstance(v, float) else v)
                                     for k, v in row.items()})
                    fcsv.flush()
                    acc, n_acc, last_t, last_step = {}, 0, now, self.step
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
                if self.step >= target or (time_limit and time.time() - t0 > time_limit):
                    break
        self.save()
        return self.step


def export_diffc(run_dir: str | Path, name: str | None = None, zoo_dir: str | Path | None = None,
                 half: bool = False, description: str = "",
                 extra_meta: dict | None = None) -> Path:
    """EMA weights of a run → weights file + sha256 + registry entry (codec "diffc")."""
    from pipeline.train import ship_weights

    run_dir = Path(run_dir)
    ck = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = DiffCTrainConfig(**ck["train_config"])
    name = name or cfg.model_id
    model_cfg = DiffCConfig.from_dict({**cfg.model_cfg().to_dict(), "name": name})
    prior = DiffusionPrior(model_cfg)
    prior.load_state_dict(ck["ema"])
    meta = {"train_steps": int(ck["step"]), "crop": cfg.crop, "batch_size": cfg.batch_size,
            "sources": cfg.sources, **(extra_meta or {})}
    data = weights_bytes(prior.eval(), name, half=half, meta=meta)
    return ship_weights(data, name, codec="diffc", zoo_dir=zoo_dir, entry={
        "config": cfg.model_config, "params": sum(p.numel() for p in prior.parameters()),
        "description": description or "DiffC: unconditional diffusion prior, progressive streams",
        **meta})


def run_training(config_path: str | Path, run_dir: str | Path, *, device: str = "cpu",
                 bf16: bool = False, batch_size: int | None = None, max_steps: int | None = None,
                 time_limit: float | None = None, export: str | None = None,
                 half: bool = False, zoo_dir: str | Path | None = None) -> str:
    """The `cdc train` entry point for configs with ``codec: diffc``; returns a summary line."""
    cfg = DiffCTrainConfig.from_yaml(config_path)
    trainer = DiffCTrainer(cfg, run_dir, device=device, bf16=bf16, batch_size=batch_size)
    step = trainer.fit(max_steps=max_steps, time_limit=time_limit)
    line = f"{run_dir}: step {step}/{cfg.steps}"
    if export:
        path = export_diffc(run_dir, export, zoo_dir=zoo_dir, half=half)
        line += f"; exported {export} -> {path}"
    return line
