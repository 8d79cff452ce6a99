"""The settings of an archive job (``cdc archive``) and the error that stops one before it
starts; shared by the planner (:mod:`jobs.archive_prepare`) and the runner
(:mod:`jobs.encode`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.archive import DEFAULT_SHARD_SIZE, EncodeOptions
from pipeline.files import DEFAULT_MAX_PIXELS
from zoo.store import default_model


class JobError(Exception):
    """A job cannot start (bad source, archive in use, model mismatch); one-line message."""


@dataclass
class ArchiveJobConfig:
    src: str
    url: str
    model: str = field(default_factory=default_model)  # the registry's default model
    rate: float | None = None  # bpp target: picks the model, or caps progressive streams
    # A fidelity target (dB PSNR of each image's base layer; rate-controlled codecs only):
    # each image gets the fewest bytes that reach it, ``rate`` is then a cap.
    psnr: float | None = None
    address: str | None = None
    num_cpus: int | None = None  # embedded Ray size (default: all cores)
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: 1 where Ray sees GPUs, else 0
    precision: str | None = None  # "bf16" on GPUs
    shard_size: int = DEFAULT_SHARD_SIZE
    # max_pixels: see pipeline.files.DEFAULT_MAX_PIXELS (a bigger image is a failed record)
    options: EncodeOptions = field(
        default_factory=lambda: EncodeOptions(max_pixels=DEFAULT_MAX_PIXELS))
    tiers: list[str] = field(default_factory=list)  # "name:steps=..,gamma=..,seed=.."
    shard_attempts: int = 3
    inflight: int = 2  # shards queued per actor
    retry_failed: bool = False
    # Re-encode archived photos whose local source file changed since (its modification
    # time differs from the stored one); without it they are only reported.
    update: bool = False
    # Plan only: say what a run would do (new, changed and failed images, shards); write
    # nothing, create no archive, start no Ray.
    dry_run: bool = False
    takeover: bool = False  # take over claims that look alive
    stale_claim_s: float = 600.0
    storage_options: dict[str, Any] | None = None
    progress: bool | None = None  # None: when stderr is a terminal


__all__ = ["ArchiveJobConfig", "JobError"]
