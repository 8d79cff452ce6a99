"""What every codec's trainer shares: run folder, resumable checkpoint, EMA, and the loop.

A codec's trainer (``train_cdc.py`` for CDC, ``train_diffc.py``, ``train_corrdiff.py``,
``train_refine.py``, beside this module) subclasses :class:`TrainerBase` and supplies
``train_step(batch) -> metrics`` and the names of the metrics it logs; the loop — random
crops, a CSV row every ``log_every`` steps, a checkpoint every ``checkpoint_every`` steps
and at the end, a time limit, a progress bar — is written once here so all codecs resume
and log the same way.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from cdc.registry import codec_of
from pipeline.training.image_crops import RandomCrops
from pipeline.training.training_config import (  # noqa: F401  (TrainConfigBase: every trainer's import)
    TrainConfigBase,
    config_from_yaml,
    trained_keys,
)

log = logging.getLogger(__name__)

RELAY_FILE = "relay.pt"
_EXACT = ("entropy.hyper.entropy_bottleneck.quantiles",)  # kept exact in relay artifacts


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` that never leaves a half-written checkpoint behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_file(run_dir: str | Path) -> Path:
    """A run folder's ``checkpoint.pt``, else its committed relay artifact (``relay.pt``)."""
    for name in ("checkpoint.pt", RELAY_FILE):
        if (Path(run_dir) / name).exists():
            return Path(run_dir) / name
    raise FileNotFoundError(f"{run_dir}: no checkpoint.pt (nor a {RELAY_FILE} relay artifact)")


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """What export needs of a run: ``ema``, ``step``, ``train_config`` (checkpoint or relay)."""
    return torch.load(run_file(run_dir), map_location="cpu", weights_only=False)


def load_checkpoint_config(run_dir: str | Path) -> tuple[dict[str, Any], str]:
    """(the run's train_config, its codec) of a run folder or relay artifact."""
    cfg = dict(load_run(run_dir)["train_config"])
    return cfg, codec_of(cfg)


@contextlib.contextmanager
def _stop_on_signals():
    """An event set by the first SIGINT/SIGTERM (the second one raises as usual)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("signal %s: stopping after this step, with a checkpoint", signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run_fit(trainer: TrainerBase, max_steps: int | None, time_limit: float | None) -> str:
    """Train and return the summary line every codec's ``run_training`` prints."""
    import sys

    step = trainer.fit(max_steps=max_steps, time_limit=time_limit, progress=sys.stderr.isatty())
    return f"{trainer.run_dir}: step {step}/{trainer.cfg.steps}"


#: The decode defaults every codec's config has, so ``cdc export-model --default-steps`` /
#: ``--default-gamma`` mean the same for all.
DECODE_DEFAULTS = ("default_steps", "default_gamma")


def with_decode_defaults(config: dict[str, Any], decode_defaults: dict[str, Any] | None,
                         allowed: tuple[str, ...] = DECODE_DEFAULTS) -> dict[str, Any]:
    """A model config dict with the operating point measured for this model (an exporter's
    ``decode_defaults``); a key outside ``allowed`` is a ``ValueError``, never dropped."""
    if not decode_defaults:
        return config
    unknown = set(decode_defaults) - set(allowed)
    if unknown:
        raise ValueError(f"unknown decode defaults {sorted(unknown)}")
    return {**config, **decode_defaults}


#: ``cdc export-model`` option → the exporter parameter that honours it.
EXPORT_OPTIONS = {"--zoo-dir": "zoo_dir", "--half": "half", "--description": "description",
                  "--default-steps": "decode_defaults", "--default-gamma": "decode_defaults",
                  "--tier": "tiers"}


def unsupported_options(exporter: Any, options: Sequence[str]) -> list[str]:
    """The ``cdc export-model`` options (keys of :data:`EXPORT_OPTIONS`) that ``exporter``
    does not name as a parameter, in order. An exporter declares what it honours by naming
    it; ``**kwargs`` does not count, so no option is taken and then silently dropped."""
    params = inspect.signature(exporter).parameters
    named = {n for n, p in params.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return [opt for opt in options if EXPORT_OPTIONS[opt] not in named]


def training_entry(config_cls: type, trainer_cls: type, export_fn: Any) -> Any:
    """A codec's ``run_training`` (what ``cdc train`` calls, the same for every codec) from
    its config class, trainer class and exporter: train or resume, then export if asked."""

    def run_training(config_path: str | Path, run_dir: str | Path, *, device: str = "cpu",
                     bf16: bool = False, batch_size: int | None = None,
                     max_steps: int | None = None, time_limit: float | None = None,
                     export: str | None = None, half: bool = False,
                     zoo_dir: str | Path | None = None) -> str:
        cfg = config_cls.from_yaml(config_path)
        trainer = trainer_cls(cfg, run_dir, device=device, bf16=bf16, batch_size=batch_size)
        line = run_fit(trainer, max_steps, time_limit)
        if export:
            path = export_fn(run_dir, export, zoo_dir=zoo_dir, half=half)
            line += f"; exported {export} -> {path}"
        return line

    run_training.__doc__ = f"The `cdc train` entry point for {config_cls.__name__} configs."
    return run_training


def save_relay(run_dir: str | Path, out_dir: str | Path, max_mib: float = 16.0) -> Path:
    """A run's small resumable artifact, to commit: fp16 EMA weights (the frozen space left
    out), step and config. A run with ``init_from: OUT_DIR`` resumes from it with a fresh
    optimizer; a session that may end on another machine commits one of these."""
    ck = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    sd = {k: (v.half() if v.is_floating_point() and not k.startswith(_EXACT) else v)
          for k, v in ck["ema"].items() if not k.startswith("space.")}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Step, config and a trainer's small extra state (a CorrDiff base's digest), no optimizers.
    extra = {k: v for k, v in ck.items() if k not in ("model", "ema") and not k.endswith("opt")}
    atomic_save({**extra, "ema": sd}, out / RELAY_FILE)
    size = (out / RELAY_FILE).stat().st_size
    if size > max_mib * (1 << 20):
        raise ValueError(f"{out / RELAY_FILE}: {size / (1 << 20):.1f} MiB, over {max_mib} MiB")
    (out / "train_config.yaml").write_text(yaml.safe_dump(ck["train_config"], sort_keys=True))
    return out / RELAY_FILE


class TrainerBase:
    """Subclasses set ``self.model`` and ``self.opt`` then call :meth:`_start`; their
    ``train_step`` calls :meth:`step_ema`.

    ``cfg`` needs: sources, crop, max_side, workers, batch_size, steps, checkpoint_every,
    log_every, seed (and model_config, unless :meth:`check_checkpoint` is overridden).
    Checkpoints hold model, ema, opt, step, train_config and lineage (the configs this run
    trained with before, each with the step it ran to), plus :meth:`extra_state`.
    """

    metric_fields: tuple[str, ...] = ("loss",)
    csv_digits = 5
    refresh_every = 500

    def __init__(self, cfg: Any, run_dir: str | Path, device: str = "cpu", bf16: bool = False,
                 batch_size: int | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        self.bf16 = bf16
        if batch_size:
            cfg.batch_size = batch_size
        torch.manual_seed(cfg.seed)
        self.step = 0
        self.lineage: list[dict[str, Any]] = []  # earlier configs of this run (see save)
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        self.model: nn.Module
        self.ema: nn.Module
        self.opt: torch.optim.Optimizer

    def _start(self) -> None:
        """Make the EMA copy and resume from ``checkpoint.pt`` if the run has one."""
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        if self.ckpt_path.exists():
            self._load(self.ckpt_path)
        elif getattr(self.cfg, "init_from", None):
            self._init_from(Path(self.cfg.init_from))

    def _init_from(self, path: Path) -> None:
        """Weights (and, from a full checkpoint, optimizer and step) of another run.

        A relay artifact holds only the fp16 EMA: the optimizer starts fresh and the raw
        weights start from the EMA, which one log line says."""
        src = path / "checkpoint.pt" if path.is_dir() and (path / "checkpoint.pt").exists() \
            else path / RELAY_FILE if path.is_dir() else path
        if not src.exists():
            raise FileNotFoundError(f"init_from {path}: no checkpoint.pt or {RELAY_FILE}")
        ck = torch.load(src, map_location=self.device, weights_only=False)
        self.check_checkpoint(ck, src)
        ema = {k: v.float() if v.is_floating_point() else v for k, v in ck["ema"].items()}
        own = self.model.state_dict()
        ema.update({k: v for k, v in own.items() if k not in ema})  # e.g. a frozen space
        self.ema.load_state_dict(ema)
        self.model.load_state_dict(ck["model"] if "model" in ck else ema)
        if "opt" in ck:
            self.opt.load_state_dict(ck["opt"])
            self.load_extra_state(ck)
        else:
            log.warning("init_from %s: an EMA-only relay artifact: lost are the optimizer "
                        "moments (restarted at zero)%s", src, "" if "model" in ck else
                        " and the raw weights (restarted from the EMA)")
            self.load_relay_state(ck)
        self.step = int(ck["step"])
        self._inherit_lineage(ck, src)

    def _inherit_lineage(self, ck: dict[str, Any], src: Path) -> None:
        """The parent's lineage, plus the parent's config when it trained something else
        (a fork, or a config edited between sessions): what retraining from scratch needs."""
        lineage = list(ck.get("lineage", []))
        cls = type(self.cfg)
        if trained_keys(cls, ck["train_config"]) != trained_keys(cls, asdict(self.cfg)):
            lineage.append({"until_step": int(ck["step"]), "from": str(src),
                            "train_config": dict(ck["train_config"])})
        self.lineage = lineage

    # -- checkpoints ------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, ck: dict[str, Any]) -> None:
        pass

    def load_relay_state(self, ck: dict[str, Any]) -> None:
        """What a trainer takes from an EMA-only relay beyond the weights (nothing here)."""

    def check_checkpoint(self, ck: dict[str, Any], path: Path) -> None:
        """Refuse to resume a run trained for something else."""
        if ck["train_config"]["model_config"] != self.cfg.model_config:
            raise ValueError(f"{path}: checkpoint is for {ck['train_config']['model_config']!r}")

    def _load(self, path: Path) -> None:
        ck = torch.load(path, map_location=self.device, weights_only=False)
        self.check_checkpoint(ck, path)
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["opt"])
        self.step = int(ck["step"])
        self.load_extra_state(ck)
        self._inherit_lineage(ck, path)

    def save(self) -> None:
        atomic_save({"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                     "opt": self.opt.state_dict(), "step": self.step,
                     "train_config": asdict(self.cfg), "lineage": self.lineage,
                     **self.extra_state()}, self.ckpt_path)

    # -- EMA ----------------------------------------------------------------------------------
    def ema_decay_at(self, step: int) -> float:
        """The one EMA policy (codecs differ only by config values): 0 (copy) before
        ``ema_start``, then ``ema_decay``, capped at (1+n)/(10+n) when ``ema_ramp``."""
        cfg = self.cfg
        if step < (getattr(cfg, "ema_start", None) or 0):
            return 0.0
        decay = cfg.ema_decay
        if getattr(cfg, "ema_ramp", False):
            decay = min(decay, (1 + step) / (10 + step))
        return decay

    def step_ema(self) -> None:
        """Update the EMA for the step just taken (call before ``self.step += 1``)."""
        self.update_ema(self.ema_decay_at(self.step), copy_buffers=True)

    @torch.no_grad()
    def update_ema(self, decay: float, copy_buffers: bool = False) -> None:
        for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
            pe.lerp_(pm.detach(), 1 - decay)
        if copy_buffers:
            for be, bm in zip(self.ema.buffers(), self.model.buffers()):
                if be.shape == bm.shape:
                    be.copy_(bm)

    # -- loop -------------------------------------------------------------------------------
    def dataset(self, seed: int) -> Any:
        """What the loop iterates: random pixel crops unless a trainer needs other samples."""
        cfg = self.cfg
        return RandomCrops(cfg.sources, cfg.crop, samples_per_epoch=10**9, max_side=cfg.max_side,
                           seed=seed)

    def space_dataset(self, seed: int, pixels: bool = False, space: Any = None) -> Any:
        """Random crops in the model's space (or ``space``): pixel crops for pixel models,
        else crops of the cached latents of the sources (encoded here first unless a
        builder runs), with the aligned pixel crops when ``pixels``."""
        from pipeline.training.latent_cache import LatentCrops, ensure_cache

        space = space if space is not None else getattr(self.model, "space", None)
        if space is None or space.name == "pixel":
            return TrainerBase.dataset(self, seed)
        cfg = self.cfg
        folder = ensure_cache(cfg.sources, space, cfg.latent_cache, cfg.max_side)
        return LatentCrops(folder, cfg.latent_crop, space.stride, seed=seed, pixels=pixels,
                           max_side=cfg.max_side)

    def train_step(self, x: Any) -> dict[str, float]:
        raise NotImplementedError

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step`` under the config's warm-up and decay."""
        import math

        cfg = self.cfg
        lr = cfg.lr
        start = getattr(cfg, "lr_schedule_start", 0)
        if start >= cfg.steps:
            raise ValueError(f"lr_schedule_start ({start}) must be below steps ({cfg.steps})")
        step, steps = step - start, cfg.steps - start
        warm = getattr(cfg, "lr_warmup_steps", 0)
        if warm and step < warm:
            return lr * (max(0, step) + 1) / warm
        decay = getattr(cfg, "lr_decay", "constant")
        if decay == "cosine":
            frac = min(1.0, max(0.0, (step - warm) / max(1, steps - warm)))
            lo = cfg.lr_min_ratio
            return lr * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac)))
        if decay != "constant":
            raise ValueError(f"lr_decay must be 'constant' or 'cosine', got {decay!r}")
        return lr

    def set_lr(self) -> None:
        """Apply :meth:`lr_at` (groups keep their ratio to ``cfg.lr``, e.g. a scaled trunk);
        a run with neither warm-up nor decay is left as its trainer sets it."""
        cfg = self.cfg
        if not getattr(cfg, "lr_warmup_steps", 0) and getattr(cfg, "lr_decay",
                                                               "constant") == "constant":
            return
        lr = self.lr_at(self.step)
        for group in self.opt.param_groups:
            ratio = group.setdefault("lr_ratio", group["lr"] / cfg.lr)
            group["lr"] = lr * ratio

    def fit(self, max_steps: int | None = None, time_limit: float | None = None,
            progress: bool = True) -> int:
        """Train until ``cfg.steps`` (or ``max_steps`` more, or ``time_limit`` seconds).

        SIGINT/SIGTERM end the run after the current step *with* a checkpoint (a relay
        run stopped at a session's end loses nothing); a second signal stops at once."""
        with _stop_on_signals() as stop:
            return self._fit(max_steps, time_limit, progress, stop)

    def _fit(self, max_steps: int | None, time_limit: float | None, progress: bool,
             stop: threading.Event) -> int:
        cfg = self.cfg
        target = cfg.steps if max_steps is None else min(cfg.steps, self.step + max_steps)
        if self.step >= target:
            return self.step
        data = self.dataset(seed=cfg.seed + self.step)
        loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.workers,
                            shuffle=False, drop_last=True, persistent_workers=cfg.workers > 0,
                            pin_memory=self.device.type == "cuda")
        csv_path = self.run_dir / "metrics.csv"
        new_csv = not csv_path.exists()
        fields = ["step", "time", *self.metric_fields, "it_s"]
        t0 = time.time()
        last_t, last_step = t0, self.step
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with open(csv_path, "a", newline="") as fcsv, Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn(), disable=not progress,
        ) as bar:
            writer = csv.DictWriter(fcsv, fieldnames=fields, extrasaction="ignore")
            if new_csv:
                writer.writeheader()
            task = bar.add_task("train", total=target, completed=self.step, status="")
            acc: dict[str, float] = {}
            n_acc = 0
            for x in loader:
                self.set_lr()
                m = self.train_step(x)
                if self.step % self.refresh_every == 0 and hasattr(data, "refresh"):
                    data.refresh()  # a latent cache may still be filling beside the run
                for k, v in m.items():
                    acc[k] = acc.get(k, 0.0) + v
                n_acc += 1
                if self.step % cfg.log_every == 0 or self.step == target:
                    now = time.time()
                    row: dict[str, Any] = {k: v / n_acc for k, v in acc.items()}
                    row.update(step=self.step, time=round(now - t0, 1),
                               it_s=(self.step - last_step) / max(now - last_t, 1e-9))
                    writer.writerow({k: (round(v, self.csv_digits) if isinstance(v, float) else v)
                                     for k, v in row.items()})
                    fcsv.flush()
                    bar.update(task, completed=self.step, status=self.status(row))
                    acc, n_acc, last_t, last_step = {}, 0, now, self.step
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
                if self.step >= target or stop.is_set() or (
                        time_limit and time.time() - t0 > time_limit):
                    break
        self.save()
        return self.step

    def status(self, row: dict[str, Any]) -> str:
        return f"loss {row.get('loss', float('nan')):.4f} {row['it_s']:.2f} it/s"


# python -m pipeline.training.trainer RUN_DIR OUT_DIR: save a relay artifact
if __name__ == "__main__":
    import sys

    print(save_relay(sys.argv[1], sys.argv[2]))
