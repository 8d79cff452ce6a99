"""Training configs: the YAML files in ``configs/`` and the dataclass every codec's adds to.

A file holds one model, or one model *family* whose members (rungs of a rate ladder) share
every key but a few: its ``rungs:`` mapping gives each rung's own keys, and
``CONFIG#RUNG`` (``cdc train CONFIG --rung RUNG``) picks one. A rung's keys override the
shared ones, so ``configs/legacy/lcdc-ladder.yaml#q3`` reads as one flat config. A file
with ``extends: OTHER#RUNG`` is another name for that rung (how old paths keep working).

Keys that were renamed (``TrainConfigBase.renamed_keys``) still load, from old YAML files and
from the ``train_config`` stored in checkpoints and relay artifacts, with one deprecation
line each; a key nobody knows is an error naming the allowed ones.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from cdc.registry import DEFAULT_CODEC

log = logging.getLogger(__name__)

C = TypeVar("C")
_WARNED: set[tuple[str, str]] = set()
#: Keys that change how a run is executed or logged, not what it trains: a config that
#: differs from its parent only in these is the same run (no lineage entry).
RUNTIME_KEYS = frozenset({"init_from", "workers", "checkpoint_every", "log_every",
                          "latent_cache", "zoo_dir", "zoo_name", "description", "fork_of"})


def split_rung(spec: str | Path) -> tuple[Path, str | None]:
    """``"configs/x.yaml#q3"`` → (``configs/x.yaml``, ``"q3"``); no ``#``: no rung."""
    text = str(spec)
    path, sep, rung = text.rpartition("#")
    return (Path(path), rung or None) if sep else (Path(text), None)


def read_config(spec: str | Path, rung: str | None = None, _depth: int = 0) -> dict[str, Any]:
    """The flat key → value mapping of a config file (``spec`` may end in ``#RUNG``).

    A file with ``rungs:`` needs a rung, and a rung needs a file with ``rungs:``: either
    mistake is a ``ValueError`` naming the rungs there are. ``extends: OTHER[#RUNG]``
    (relative to the file's folder) reads that config first and overrides its keys: how an
    old config path stays a name for a rung of a family file."""
    path, in_spec = split_rung(spec)
    rung = rung or in_spec
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    parent = raw.pop("extends", None)
    if parent is not None:
        if _depth >= 4 or "rungs" in raw:
            raise ValueError(f"{path}: extends: at most 4 deep, in a file without rungs")
        raw = {**read_config(Path(path).parent / str(parent), None, _depth + 1), **raw}
    rungs = raw.pop("rungs", None)
    if rungs is None:
        if rung:
            raise ValueError(f"{path}: has no rungs, so no rung {rung!r}")
        return raw
    if not isinstance(rungs, dict) or not all(isinstance(v, dict) for v in rungs.values()):
        raise ValueError(f"{path}: rungs must map each rung's name to its keys")
    if rung not in rungs:
        what = f"no rung {rung!r}" if rung else "a family of rungs: name one"
        raise ValueError(f"{path}: {what} ({path}#RUNG or --rung RUNG; rungs: "
                         f"{', '.join(map(str, rungs))})")
    return {**raw, **rungs[rung]}


def rung_names(path: str | Path) -> list[str]:
    """The rungs of a family config, in file order (empty for a one-model config)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return [str(r) for r in (raw.get("rungs") or {})]


def config_from_mapping(cls: type[C], raw: dict[str, Any], where: str = "config") -> C:
    """A config dataclass from a mapping: renamed keys (``cls.renamed_keys``) mapped with one
    deprecation line, unknown keys an error naming the allowed ones."""
    raw = dict(raw)
    for old, new in getattr(cls, "renamed_keys", {}).items():
        if old not in raw:
            continue
        if new in raw:
            raise ValueError(f"{where}: both {old!r} (its old name) and {new!r}; keep {new!r}")
        raw[new] = raw.pop(old)
        if (where, old) not in _WARNED:
            _WARNED.add((where, old))
            log.warning("%s: %r is deprecated, read as %r (%s)", where, old, new, cls.__name__)
    names = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(names)}")
    return cls(**raw)


def config_from_yaml(cls: type[C], spec: str | Path, rung: str | None = None) -> C:
    """A config dataclass from YAML (``spec`` may be ``FILE#RUNG``); see :func:`read_config`."""
    return config_from_mapping(cls, read_config(spec, rung), str(spec))


@dataclass
class TrainConfigBase:
    """The fields every codec's training config shares; each codec adds its own.

    One YAML file per model or model family (``configs/``); its ``codec`` key picks the
    trainer through :mod:`cdc.registry`.
    """

    #: Old key → new key, for this codec's configs (read with a deprecation line).
    renamed_keys: ClassVar[dict[str, str]] = {}

    codec: str = DEFAULT_CODEC
    model_id: str = "model"
    # The name `cdc export-model` ships the model under when given none, and its registry
    # line (a family config gives each rung its own), so no script holds that mapping.
    zoo_name: str | None = None
    description: str = ""
    sources: list[str] = field(default_factory=lambda: ["../shared/data/train"])
    crop: int = 128
    max_side: int | None = 512
    workers: int = 0
    batch_size: int = 8
    steps: int = 20_000
    lr: float = 2e-4
    grad_clip: float = 1.0
    # Learning-rate schedule (every trainer): linear warm-up over ``lr_warmup_steps``, then
    # constant or a cosine decay to ``lr_min_ratio``·lr at ``steps``; both counted from step
    # ``lr_schedule_start`` (a run continued with ``init_from`` at step N and
    # ``lr_schedule_start: N`` gets a fresh warm-up and decay instead of its parent's tail).
    lr_warmup_steps: int = 0
    lr_decay: str = "constant"
    lr_min_ratio: float = 0.1
    lr_schedule_start: int = 0
    # EMA policy (every trainer, TrainerBase.ema_decay_at): before step ``ema_start`` the
    # EMA copies the weights, then it averages at ``ema_decay``; ``ema_ramp`` caps the decay
    # at (1+n)/(10+n) so a short run's EMA is not stuck near the init. None: the trainer's
    # default (CDC: the end of the λ warm-up; the others: 0).
    ema_decay: float = 0.999
    ema_start: int | None = None
    ema_ramp: bool = False
    checkpoint_every: int = 250
    log_every: int = 25
    seed: int = 0
    # Latent models (space != pixel) train on cached latents of the sources.
    latent_cache: str = "runs/latent-cache"
    latent_crop: int = 16  # crop side in space positions (16 → 128-pixel crops for TAEF2)
    # A new run may start from another run's checkpoint.pt or a committed relay artifact
    # (fp16 EMA weights + config, see save_relay): how a rate ladder's rungs fork from one
    # base run, and how training goes on on a fresh machine. The run's checkpoints and
    # relays record the lineage (each earlier config and the step it ran to).
    init_from: str | None = None
    # Where a run that is already under way was forked from, for retraining it from
    # scratch: "CONFIG[#RUNG]@STEP" (train that config to STEP, then this one from it).
    fork_of: str | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, rung: str | None = None):
        """The config of ``path`` (``FILE#RUNG`` or ``rung``), refused when its ``codec``
        is not this trainer's."""
        cfg = config_from_yaml(cls, path, rung)
        expected = cls.__dataclass_fields__["codec"].default  # type: ignore[attr-defined]
        if cfg.codec != expected:
            raise ValueError(f"{path}: codec is {cfg.codec!r}, not {expected!r}")
        return cfg

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "train_config"):
        """The config a checkpoint or relay stored (old keys mapped, see ``renamed_keys``)."""
        return config_from_mapping(cls, raw, where)


def trained_keys(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """What a stored config trains, comparable across code versions: defaults filled in,
    renamed keys mapped, :data:`RUNTIME_KEYS` left out (the raw dict if it does not load)."""
    try:
        full = asdict(config_from_mapping(cls, raw, "lineage"))
    except (TypeError, ValueError):
        full = dict(raw)
    return {k: v for k, v in full.items() if k not in RUNTIME_KEYS}


def _print_rungs(path: str) -> None:
    """``python -m pipeline.training.training_config rungs FILE``: one tab-separated line per rung
    (rung, zoo_name, init_from, description) for shell scripts such as scripts/ship-ladder."""
    for rung in rung_names(path):
        cfg = read_config(path, rung)
        fields = [rung] + [str(cfg.get(k) or "") for k in ("zoo_name", "init_from",
                                                            "description")]
        print("\t".join(fields))


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "rungs":
        sys.exit("usage: python -m pipeline.training.training_config rungs CONFIG")
    _print_rungs(sys.argv[2])
