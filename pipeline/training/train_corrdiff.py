"""`cdc train` for CorrDiff: fit the end-to-end decoder beside a frozen CDC model, export both.

Only the added decoder (:class:`cdc.corrdiff.E2EDecoder`) learns; the base CDC model
(encoder, entropy model, context decoder, U-Net) is loaded from the zoo by name, path
or URL (``base_model``), frozen, and used in eval mode so the decoder sees exactly the
ŷ the codec codes (rounded around the hyperprior means). Loss: MSE(x̂, x) +
``lpips_weight``·LPIPS(x̂, x). On a latent base (TAEF2) x is the encoder's latent in
model units, read from the shared latent cache, and the LPIPS term (when asked for) sees
x̂ through the frozen decoder beside the aligned pixel crop. The trunk starts from the base
context decoder's weights and trains at ``trunk_lr_scale``·lr. ``cdc train`` runs it
through :func:`pipeline.training.trainer.training_entry` like every codec's trainer (resumable
``checkpoint.pt``, relays, the shared EMA policy); ``export`` writes base + decoder as one
corrdiff weights file via :func:`zoo.store.ship_weights`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cdc.corrdiff.codec import corrdiff_weights_bytes
from cdc.corrdiff.correction import CorrectionConfig
from cdc.corrdiff.decoder import DecoderConfig, E2EDecoder
from cdc.model_config import CDCConfig
from cdc.models import ConditionalDiffusionCompressor
from pipeline.training.train_cdc import _perceptual
from pipeline.training.trainer import (
    TrainConfigBase,
    TrainerBase,
    training_entry,
    with_decode_defaults,
)
from zoo import load_weights
from zoo.store import ship_weights

MIB = 1 << 20
BASE_STORAGE = ("auto", "embed", "reference")


@dataclass
class CorrDiffTrainConfig(TrainConfigBase):
    """One YAML per model (configs/corrdiff-*.yaml); ``codec: corrdiff`` selects this trainer."""

    codec: str = "corrdiff"
    base_model: str = "cdc-small"  # shipped name, weights path or fsspec URL (frozen)
    base_sha256: str | None = None  # pin the base weights (else the registry/sidecar check)
    model_id: str = "corrdiff-small"
    decoder: dict[str, Any] = field(default_factory=dict)  # DecoderConfig fields
    correction: dict[str, Any] = field(default_factory=dict)  # CorrectionConfig fields
    steps: int = 2000
    lr: float = 5e-4
    trunk_lr_scale: float = 0.2
    lpips_weight: float = 0.0
    perceptual: str = "lpips-vgg"  # LPIPS-Alex is an evaluation metric (legacy configs name it)
    ema_decay: float = 0.99
    checkpoint_every: int = 100
    log_every: int = 10
    max_file_mib: float = 16.0
    export_half: bool = False  # fp16 network weights in the exported file (like --half)
    # "embed": the file holds the base too; "reference": it names the base by sha256 (the
    # base must be shipped or in the local model cache); "auto": embed if it fits max_file_mib
    base_storage: str = "auto"
    zoo_dir: str | None = None  # None: the package zoo (zoo/)

    @classmethod
    def from_yaml(cls, path: str | Path, rung: str | None = None) -> CorrDiffTrainConfig:
        cfg = super().from_yaml(path, rung)
        DecoderConfig.from_dict(cfg.decoder)
        CorrectionConfig.from_dict(cfg.correction)
        if cfg.base_storage not in BASE_STORAGE:
            raise ValueError(f"{path}: base_storage must be one of {', '.join(BASE_STORAGE)}, "
                             f"got {cfg.base_storage!r}")
        return cfg


class CorrDiffTrainer(TrainerBase):
    """The trained module (``self.model``) is the end-to-end decoder; the base stays frozen."""

    metric_fields = ("loss", "mse", "psnr", "lpips", "grad_norm")

    def __init__(self, cfg: CorrDiffTrainConfig, run_dir: str | Path, device: str = "cpu",
                 bf16: bool = False, batch_size: int | None = None):
        super().__init__(cfg, run_dir, device, bf16, batch_size)
        loaded = load_weights(cfg.base_model, sha256=cfg.base_sha256)
        self.base: ConditionalDiffusionCompressor = loaded.model.to(self.device).eval()
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.base_id, self.base_sha256 = loaded.model_id, loaded.sha256
        self.base_meta = loaded.meta  # the base's recommended tiers go into the export
        self.model = E2EDecoder(self.base.cfg, DecoderConfig.from_dict(cfg.decoder)).to(self.device)
        self.model.init_trunk_from(self.base.context)
        self.opt = torch.optim.Adam([
            {"params": list(self.model.head.parameters()), "lr": cfg.lr},
            {"params": list(self.model.trunk.parameters()), "lr": cfg.lr * cfg.trunk_lr_scale},
        ])
        self.perceptual = _perceptual(cfg.perceptual, self.device) if cfg.lpips_weight > 0 else None
        self._start()

    def check_checkpoint(self, ck: dict[str, Any], path: Path) -> None:
        if ck.get("base_sha256") != self.base_sha256:
            raise ValueError(f"{path}: checkpoint was trained on base weights "
                             f"{ck.get('base_sha256')}, not {self.base_sha256}")

    def extra_state(self) -> dict[str, Any]:
        return {"base_sha256": self.base_sha256}

    @property
    def latent_base(self) -> bool:
        return self.base.cfg.space != "pixel"

    def dataset(self, seed: int):
        """Pixel crops for a pixel base; cached latents (+ pixels for LPIPS) for a latent one."""
        return self.space_dataset(seed, pixels=self.perceptual is not None, space=self.base.space)

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The ŷ the codec would code for x in model units (frozen base in eval mode:
        rounding, no noise)."""
        y = self.base.g_a(x).float()
        return self.base.entropy(y)["y_hat"]

    def train_step(self, batch: torch.Tensor | list[torch.Tensor]) -> dict[str, float]:
        self.model.train()
        x, image = batch if isinstance(batch, (list, tuple)) else (batch, None)
        x = self.base.to_model_units(x.to(self.device))  # pixels: the image itself
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            y_hat = self.latent(x)
            x_hat = self.model(y_hat).float()
            mse = torch.mean((x_hat - x) ** 2)
            loss = mse
            perc = x.new_zeros(())
            if self.perceptual is not None:
                if self.latent_base:  # through the frozen decoder, against the pixels
                    seen = self.base.space.decode_differentiable(self.base.from_model_units(x_hat))
                    perc = self.perceptual(seen, image.to(self.device)).mean()
                else:
                    perc = self.perceptual(x_hat.clamp(-1, 1), x).mean()
                loss = loss + self.cfg.lpips_weight * perc
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"non-finite loss at step {self.step}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step_ema()
        self.step += 1
        m = float(mse.detach())
        # PSNR of x in [-1, 1] (range 2): 10·log10(4 / MSE); a latent's MSE has no PSNR.
        psnr = float("nan") if self.latent_base else 10 * math.log10(4 / max(m, 1e-12))
        return {"loss": float(loss.detach()), "mse": m, "psnr": psnr,
                "lpips": float(perc.detach()), "grad_norm": float(gnorm)}

    def status(self, row: dict[str, Any]) -> str:
        return f"loss {row['loss']:.4f} psnr {row['psnr']:.2f} {row['it_s']:.2f} it/s"

    def export(self, name: str, half: bool = False, description: str = "",
               decode_defaults: dict[str, Any] | None = None,
               tiers: dict[str, dict[str, Any]] | None = None) -> Path:
        """EMA decoder + frozen base → one corrdiff weights file in the zoo (size-checked).

        ``decode_defaults`` go into the file's config (the base's network is unchanged, so a
        referenced base still fits); ``tiers`` replace the base's recommended tiers.
        """
        cfg = self.cfg
        base = self.base.cpu()
        if decode_defaults:  # the same network (a shallow copy), its measured operating point
            base = copy.copy(base)
            base.cfg = CDCConfig.from_dict(with_decode_defaults(base.cfg.to_dict(),
                                                                decode_defaults))
        decoder = copy.deepcopy(self.ema).cpu().eval()
        correction = CorrectionConfig.from_dict(cfg.correction)
        meta = {"train_steps": self.step, "crop": cfg.crop, "batch_size": cfg.batch_size,
                "lr": cfg.lr, "lpips_weight": cfg.lpips_weight, "sources": cfg.sources,
                "base_model": self.base_id, "base_sha256": self.base_sha256}
        tiers = tiers or self.base_meta.get("tiers")
        if tiers:  # else measured for the base; an archive encodes one corrected path per tier
            meta["tiers"] = tiers
        data = b""
        if cfg.base_storage != "reference":
            data = corrdiff_weights_bytes(base, decoder, correction, name, half=half, meta=meta)
        if cfg.base_storage == "reference" or (cfg.base_storage == "auto"
                                               and len(data) > cfg.max_file_mib * MIB):
            self._remember_base()
            meta["base_storage"] = "reference"
            data = corrdiff_weights_bytes(base, decoder, correction, name, half=half, meta=meta,
                                          base=(self.base_id, self.base_sha256))
        if len(data) > cfg.max_file_mib * MIB:
            raise ValueError(f"corrdiff weights are {len(data) / MIB:.1f} MiB, over the "
                             f"{cfg.max_file_mib} MiB limit (try --half or base_storage: "
                             "reference)")
        self.base.to(self.device)
        n_dec = sum(p.numel() for p in decoder.parameters())
        n_base = sum(p.numel() for n, p in base.named_parameters() if not n.startswith("space."))
        return ship_weights(data, name, codec="corrdiff", zoo_dir=cfg.zoo_dir, entry={
            "config": base.cfg.name, "params": n_base + n_dec,
            "decoder_params": n_dec, "description": description or
            f"CorrDiff: {self.base_id} + end-to-end decoder", **meta})


    def _remember_base(self) -> None:
        """A referenced base must be found again by digest: shipped, or remembered here."""
        from zoo.cache import find_model, remember

        if find_model(self.base_sha256, "cdc") is None and not remember(
                self.base_sha256, self.cfg.base_model):
            raise ValueError(f"base {self.cfg.base_model!r} is not shipped and the local model "
                             "cache is not writable: use base_storage: embed")


def export(run_dir: str | Path, name: str | None = None, zoo_dir: str | Path | None = None,
           half: bool = False, description: str = "",
           decode_defaults: dict[str, Any] | None = None,
           tiers: dict[str, dict[str, Any]] | None = None) -> Path:
    """``cdc export-model`` for a CorrDiff run: its EMA decoder + the frozen base it names."""
    from pipeline.training.trainer import load_checkpoint_config

    raw, _ = load_checkpoint_config(run_dir)
    # init_from the folder itself: its checkpoint.pt, or a committed relay.pt (which the
    # trainer would not look for: without this a relay exported an untrained decoder).
    cfg = CorrDiffTrainConfig.from_dict({**raw, "init_from": str(run_dir),
                                         **({"zoo_dir": str(zoo_dir)} if zoo_dir else {})})
    trainer = CorrDiffTrainer(cfg, run_dir)
    return trainer.export(name or cfg.zoo_name or cfg.model_id, half=half or cfg.export_half,
                          description=description or cfg.description,
                          decode_defaults=decode_defaults, tiers=tiers)


run_training = training_entry(CorrDiffTrainConfig, CorrDiffTrainer, export)

__all__ = ["CorrDiffTrainConfig", "CorrDiffTrainer", "export", "run_training"]
