"""`cdc train`: fit a CDC model from a YAML config, resumably, and export it to the zoo.

Objective (Yang & Mandt): λ·bpp + (1−ρ)·diffusion loss + ρ·LPIPS(x̂0, x0), with a λ
warm-up first (``lam_warmup_steps`` at ``lam_warmup``: without it the rate term collapses
the latent and decodes come out grey), EMA weights, CompressAI's auxiliary quantile loss
on its own optimizer, and gradient clipping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from cdc.model_config import CDCConfig
from cdc.models import ConditionalDiffusionCompressor
from cdc.objectives import cdc_loss
from cdc.presets import cdc_preset
from cdc.weights import weights_bytes
from pipeline.training.trainer import (
    TrainConfigBase,
    TrainerBase,
    load_run,
    training_entry,
    with_decode_defaults,
)
from zoo.components import load_space
from zoo.store import ship_weights


@dataclass
class TrainConfig(TrainConfigBase):
    """Everything a CDC run needs; one YAML file per model or family (see configs/)."""

    #: ``warmup_steps`` meant the λ warm-up here but the LR warm-up in DiffC: renamed.
    renamed_keys: ClassVar[dict[str, str]] = {"warmup_steps": "lam_warmup_steps"}

    codec: str = "cdc"
    model_config: str = "cdc-small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    model_id: str = "cdc-small"
    workers: int = 1
    aux_lr: float = 1e-3
    lam: float = 0.01
    # λ warm-up: the first ``lam_warmup_steps`` steps train at ``lam_warmup`` (a high rate, so
    # the decoder learns to use the latent before the rate term can collapse it).
    lam_warmup_steps: int = 1000
    lam_warmup: float = 1e-4
    rho: float = 0.0
    perceptual: str = "lpips-vgg"  # LPIPS-Alex is an evaluation metric (legacy configs name it)
    perceptual_mse: float = 1.0  # weight of pixel MSE beside LPIPS in the perceptual term
    perceptual_window: int = 8  # latent models: side (space positions) decoded for it

    def __post_init__(self) -> None:
        if self.ema_start is None:  # the EMA copies the weights during the λ warm-up
            self.ema_start = self.lam_warmup_steps

    def model_cfg(self) -> CDCConfig:
        base = cdc_preset(self.model_config).to_dict()
        base.update(self.model_overrides)
        base["name"] = self.model_id
        return CDCConfig.from_dict(base)


def _perceptual(name: str, device: torch.device, mse_weight: float = 0.0):
    """ρ-term distance on images in [-1, 1] (weights from pip packages, see pipeline.metrics).

    ``mse_weight`` adds that much pixel MSE (on [0, 1] images) per sample, which keeps
    colours and PSNR honest where LPIPS alone tolerates shifts.
    """
    from pipeline.metrics import lpips as lp

    net = {"lpips-alex": "alex", "lpips-vgg": "vgg"}.get(name)
    if net is None:
        raise ValueError(f"unknown perceptual loss {name!r}; use lpips-alex or lpips-vgg")
    metric = lp.LPIPS(net=net).to(device).eval()
    for p in metric.parameters():
        p.requires_grad_(False)

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a01, b01 = (a + 1) / 2, (b + 1) / 2
        d = metric(a01, b01).flatten()
        if mse_weight:
            d = d + mse_weight * ((a01 - b01) ** 2).flatten(1).mean(1)
        return d

    return distance


class Trainer(TrainerBase):
    """CDC: main optimizer on everything but the entropy bottleneck's quantiles, which get
    CompressAI's auxiliary loss on their own optimizer."""

    metric_fields = ("loss", "bpp", "diffusion", "perceptual", "aux", "grad_norm", "lam")

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, device: str = "cpu",
                 bf16: bool = False, batch_size: int | None = None):
        super().__init__(cfg, run_dir, device, bf16, batch_size)
        mcfg = cfg.model_cfg()
        space = None if mcfg.space == "pixel" else load_space(mcfg.space)
        self.model = ConditionalDiffusionCompressor(mcfg, space).to(self.device)
        aux = {n for n, _ in self.model.named_parameters() if n.endswith(".quantiles")}
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.opt = torch.optim.AdamW([params[n] for n in params if n not in aux], lr=cfg.lr,
                                     weight_decay=0.0)
        self.aux_opt = torch.optim.Adam([params[n] for n in sorted(aux)], lr=cfg.aux_lr)
        self.perceptual = (_perceptual(cfg.perceptual, self.device,
                                       cfg.perceptual_mse if mcfg.space != "pixel" else 0.0)
                           if cfg.rho > 0 else None)
        self._start()

    def dataset(self, seed: int):
        """Latent models: crops of the cached latents, with the aligned pixels when the
        perceptual term needs them."""
        return self.space_dataset(seed, pixels=self.cfg.rho > 0)

    def extra_state(self) -> dict[str, Any]:
        return {"aux_opt": self.aux_opt.state_dict()}

    def load_extra_state(self, ck: dict[str, Any]) -> None:
        self.aux_opt.load_state_dict(ck["aux_opt"])

    def lam_at(self, step: int) -> float:
        return self.cfg.lam_warmup if step < self.cfg.lam_warmup_steps else self.cfg.lam

    def train_step(self, batch: torch.Tensor | list[torch.Tensor]) -> dict[str, float]:
        self.model.train()
        x, image = batch if isinstance(batch, (list, tuple)) else (batch, None)
        x = self.model.to_model_units(x.to(self.device, non_blocking=True))
        if image is not None:
            image = image.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = cdc_loss(self.model, x, self.lam_at(self.step), self.cfg.rho, self.perceptual,
                           image=image, window=self.cfg.perceptual_window)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        aux = self.model.aux_loss()
        self.aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        self.aux_opt.step()
        self.step_ema()  # ema_start defaults to the λ warm-up's end: the EMA copies until then
        self.step += 1
        return {"loss": float(out["loss"].detach()), "bpp": float(out["bpp"]),
                "diffusion": float(out["diffusion"]), "perceptual": float(out["perceptual"]),
                "aux": float(aux.detach()), "grad_norm": float(gnorm),
                "lam": self.lam_at(self.step - 1)}

    def status(self, row: dict[str, Any]) -> str:
        return f"loss {row['loss']:.4f} bpp {row['bpp']:.3f} {row['it_s']:.2f} it/s"


def export_model(run_dir: str | Path, name: str | None = None, zoo_dir: str | Path | None = None,
                 half: bool = False, description: str = "", extra_meta: dict | None = None,
                 decode_defaults: dict[str, Any] | None = None,
                 tiers: dict[str, dict[str, Any]] | None = None) -> Path:
    """EMA weights of a run → update() → weights file + sha256 + registry entry.

    ``decode_defaults`` (``default_steps``/``default_gamma``) and ``tiers`` record the
    operating points measured for *this* model: decoders use the former when a caller
    gives no settings, new archives start from the latter (see ``pipeline.archive.codec_tiers``).
    """
    run_dir = Path(run_dir)
    ck = load_run(run_dir)  # a run's checkpoint.pt or a committed relay artifact
    cfg = TrainConfig.from_dict(ck["train_config"])
    name = name or cfg.zoo_name or cfg.model_id
    description = description or cfg.description
    mcfg = cfg.model_cfg()
    if decode_defaults:
        mcfg = CDCConfig.from_dict(with_decode_defaults(mcfg.to_dict(), decode_defaults))
    if tiers:
        extra_meta = {**(extra_meta or {}), "tiers": tiers}
    space = None if mcfg.space == "pixel" else load_space(mcfg.space)
    model = ConditionalDiffusionCompressor(mcfg, space)
    frozen = {k: v for k, v in model.state_dict().items() if k.startswith("space.")}
    model.load_state_dict({**frozen, **ck["ema"]})  # the frozen space is never in a run's EMA
    model.eval().update()
    meta = {"train_steps": int(ck["step"]), "crop": cfg.crop, "batch_size": cfg.batch_size,
            "lam": cfg.lam, "rho": cfg.rho, "sources": cfg.sources, **(extra_meta or {})}
    data = weights_bytes(model, name, half=half, meta=meta)
    return ship_weights(data, name, codec="cdc", zoo_dir=zoo_dir, entry={
        "config": cfg.model_config,
        "params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("space.")),
        "description": description, **meta})


export = export_model  # the registry's name for every codec's exporter
run_training = training_entry(TrainConfig, Trainer, export_model)
