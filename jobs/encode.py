"""The encode job behind ``cdc archive``: image collection -> chunked archive, on Ray.

Design
------
**Actor pool, not Ray Data.** Encoders are long-lived Ray actors (:class:`ShardEncoder`)
that load the model once and are handed *whole shards* by the driver, one or two at a
time each (dynamic load balancing: a fast actor takes more shards). We chose this over
``ray.data.Dataset.map_batches`` with a callable class because the unit of commit here is
the shard, not the batch:

* A shard must be written by exactly one task, all at once (``Archive.write_shard`` claims
  it, buffers, commits a manifest entry). Ray Data's blocks are not aligned with shards;
  getting "one shard, one writer" out of it needs a shard-keyed groupby (an all-to-all
  shuffle of the image bytes) in front of a custom datasink.
* Resume and retries are per shard: the driver skips keys already in the archive, knows
  which attempt of which shard died with which actor, and re-plans exactly that shard
  (taking over the dead attempt's claim). Ray Data retries blocks transparently, which
  hides exactly the information the archive's claim protocol needs.
* Nothing but file names and counters passes through Ray: each actor reads its own inputs
  (a thread pool reads ahead while the model runs) and writes its own shard, so the
  object store never holds pixels and the driver never touches payloads. Backpressure is
  by construction (at most ``inflight`` shards per actor).
* On a 2-core machine Ray Data's streaming executor and its extra operator actors cost
  more than the whole job for small collections.

Batching by size happens inside the actor (``pipeline.archive.group_batches``) over a
read-ahead window, so ``compress_batch`` stacks equal padded shapes.

**Faults.** Actors restart automatically (``max_restarts=-1``); a shard whose actor died
is re-queued with ``takeover`` (up to ``shard_attempts`` times), anything it had reported
is subtracted from the counters. A storage error (full shard, model mismatch) fails that
shard at once. Images that cannot be read or encoded never fail a shard: they are retried
(reads ``read_retries`` times, a failed batch image by image) and then stored as *failed*
records carrying their error, listed in the summary. A rerun plans only the keys not yet in
the archive, so it skips finished shards and completes the rest; ``retry_failed``
removes the failed records of this input (``Archive.remove``: their shards are rewritten
without them, the ok records kept) so they are encoded again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import ray

from jobs.cluster import actor_device, actor_layout, check_fits, preflight, ray_session
from jobs.driver import drive
from jobs.models import load_codec, load_driver_codec, weights_ref
from jobs.progress import Counters, ProgressBar
from pipeline.archive import (
    DEFAULT_SHARD_SIZE,
    EncodeOptions,
    ShardPlan,
    base_tiers,
    claim_is_stale,
    encode_shard,
    open_or_create,
    plan_inputs,
    plan_shards,
    weights_digest,
)
from pipeline.archive.rate import RateError, check_rate, choose_model
from pipeline.archive.source_changes import changed_sources
from pipeline.archive.tier_settings import merge_tiers
from pipeline.files import DEFAULT_MAX_PIXELS, check_max_pixels
from pipeline.photo_metadata import check_policy
from storage import (
    Archive,
    ArchiveError,
    ArchiveNotFoundError,
    NotAnArchiveError,
    StoreAccessError,
)
from zoo.store import default_model


class JobError(Exception):
    """A job cannot start (bad source, archive in use, model mismatch); one-line message."""


@dataclass
class ArchiveJobConfig:
    src: str
    url: str
    model: str = field(default_factory=default_model)  # the registry's default model
    rate: float | None = None  # bpp target: picks the model, or caps progressive streams
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
    takeover: bool = False  # take over claims that look alive
    stale_claim_s: float = 600.0
    storage_options: dict[str, Any] | None = None
    progress: bool | None = None  # None: when stderr is a terminal


@ray.remote
class ShardEncoder:
    """Loads the model once (on its first shard); encodes and commits whole shards as a
    streaming generator of progress events ending with the shard's totals.

    Two shards may be in flight (``max_concurrency=2``, one thread each): a lock lets only
    one encode at a time, and is released for the commit, so one shard's upload overlaps
    the next one's encoding.
    """

    def __init__(self, model: str, expected_sha256: str, url: str,
                 storage_options: dict[str, Any] | None, owner: str, options: EncodeOptions,
                 precision: str | None, threads: int,
                 before_commit: Callable[[ShardPlan], None] | None = None) -> None:
        import torch

        from cdc.avif_threads import set_avif_threads

        threads = max(1, threads)
        torch.set_num_threads(threads)
        set_avif_threads(threads)  # its CPU share, not the node's (never under 2: same bytes)
        self.model, self.expected = model, expected_sha256
        self.url, self.storage_options = url, storage_options
        self.owner, self.options, self.precision = owner, options, precision
        self.before_commit = before_commit
        self.node = ray.get_runtime_context().get_node_id()
        self.device, self.gpu_ids = "cpu", []
        self.codec = self.archive = None
        self._loading = threading.Lock()
        self._compute = threading.Lock()

    def _load(self, weights: list | None) -> None:
        with self._loading:
            if self.codec is not None:
                return
            self._load_now(weights)

    def _load_now(self, weights: list | None) -> None:
        from storage import Archive

        self.device, self.gpu_ids = actor_device()
        self.codec = load_codec(self.model, self.expected, weights, device=self.device,
                                precision=self.precision)
        self.archive = Archive.open(self.url, expected_digest=weights_digest(self.codec),
                                    storage_options=self.storage_options)

    def encode(self, plan: ShardPlan, weights: list | None = None):
        if self.codec is None:
            self._load(weights)
        hook = None if self.before_commit is None else (lambda: self.before_commit(plan))
        for ev in encode_shard(self.codec, self.archive, plan, owner=self.owner,
                               options=self.options, before_commit=hook,
                               compute_lock=self._compute):
            ev["node"] = self.node
            if ev.get("type") == "shard":  # (its notes come from encode_shard's reads)
                ev["device"], ev["gpu_ids"] = self.device, self.gpu_ids
            yield ev


def _apply_rate(cfg: ArchiveJobConfig, codec: Any) -> tuple[ArchiveJobConfig, Any]:
    """``--rate``: the target of a rate-controlled codec's encoder, a cap on a progressive
    codec's streams, or a switch to the shipped model of the same codec measured nearest
    the target (see :mod:`pipeline.archive.rate`)."""
    from cdc.interface import RateControlled
    from zoo import registry

    try:
        check_rate(cfg.rate)
        if isinstance(codec, RateControlled):
            return replace(cfg, options=replace(cfg.options, rate=cfg.rate)), codec
        if getattr(codec, "progressive", False):
            return replace(cfg, options=replace(cfg.options, max_bpp=cfg.rate)), codec
        model = choose_model(cfg.model, cfg.rate, registry())
    except RateError as e:
        raise JobError(str(e)) from None
    if model == cfg.model:
        return cfg, codec
    return replace(cfg, model=model), load_driver_codec(model)


@dataclass
class Prepared:
    """What the driver knows before any encoding (no Ray needed): the job's settings (its
    rate applied), inputs, model, archive and plan."""

    cfg: ArchiveJobConfig
    items: list[Any]  # pipeline.archive.InputItem
    problems: list[dict[str, str]]  # inputs that cannot be archived, with why
    codec: Any
    arch: Any
    created: bool
    done: set[str]  # keys of this input already in the archive
    plans: list[ShardPlan]
    retried: dict[str, int]  # failed records removed to be encoded again (--retry-failed)
    not_images: Counter  # files skipped by extension
    changed: list[str]  # archived keys whose source file changed since (see source_changes)
    updated: int  # of those, removed to be encoded again (--update)


def _readable_now(items: list[Any], keys: list[str], max_pixels: int
                  ) -> tuple[list[str], list[dict[str, str]]]:
    """Of the changed sources, those that read and decode as images now, and a failure for
    each other one: an edit that broke a file must not cost the archived version."""
    from pipeline.archive.input_loading import load_item

    by_key = {it.key: it for it in items}
    ok, bad = [], []
    for k in keys:
        got = load_item(by_key[k], max_pixels=max_pixels)
        if got.error:
            bad.append({"key": k, "url": by_key[k].url,
                        "error": f"{got.error} (changed since archived; the archived "
                                 "version is kept)"})
        else:
            ok.append(k)
    return ok, bad


def _prepare(cfg: ArchiveJobConfig) -> Prepared:
    """Driver-side planning: inputs, model identity, archive, shards (no Ray needed)."""
    from cdc import WeightsError

    try:
        check_max_pixels(cfg.options.max_pixels)  # here, not in every actor's constructor
        check_policy(cfg.options.metadata)
    except ValueError as e:
        raise JobError(str(e)) from None
    try:  # the store's problems (no bucket, credentials, endpoint) before loading a model
        Archive.open(cfg.url, storage_options=cfg.storage_options)
    except ArchiveNotFoundError:
        pass  # created below
    except (StoreAccessError, NotAnArchiveError) as e:
        raise JobError(str(e)) from None
    except ArchiveError:
        pass  # the rest (a newer format, ...) is reported with the model in hand
    not_images: Counter = Counter()
    try:
        items, problems = plan_inputs(cfg.src, not_images)
    except FileNotFoundError as e:
        raise JobError(str(e)) from None
    try:
        codec = load_driver_codec(cfg.model)
        if cfg.rate is not None:
            cfg, codec = _apply_rate(cfg, codec)
    except WeightsError as e:
        raise JobError(str(e)) from None
    tiers = merge_tiers(base_tiers(codec), cfg.tiers) if cfg.tiers else None
    try:
        arch, created = open_or_create(cfg.url, codec, shard_size=cfg.shard_size,
                                       tiers=tiers, storage_options=cfg.storage_options,
                                       info={"source": str(cfg.src),
                                             **({"rate_bpp": cfg.rate} if cfg.rate else {})})
    except ArchiveError as e:
        raise JobError(str(e)) from None
    keys = {it.key for it in items}
    retried = {"images": 0, "shards_replaced": 0}
    try:
        if arch.pending_removals():  # a removal (`cdc rm`, --retry-failed) a crash cut short
            arch.finish_removals()
        if cfg.retry_failed:
            # Only the failed records leave (their shards are rewritten without them, the ok
            # records copied): re-encoding whole shards would lose every record whose
            # source file is gone since.
            again = sorted(i.key for i in arch.failed() if i.key in keys)
            if again:
                got = arch.remove(again, owner="cdc archive --retry-failed")
                retried = {"images": got["removed"], "shards_replaced": got["shards_replaced"]}
                arch = type(arch).open(cfg.url, storage_options=cfg.storage_options)
        done = set(arch.keys()) & keys
        changed = changed_sources(arch, items, done)
        updated = 0
        if changed and cfg.update:
            readable, unreadable = _readable_now(items, changed, cfg.options.max_pixels)
            problems = problems + unreadable
            if readable:
                updated = arch.remove(readable, owner="cdc archive --update")["removed"]
                arch = type(arch).open(cfg.url, storage_options=cfg.storage_options)
    except ArchiveError as e:
        raise JobError(str(e)) from None
    completed = set(arch.completed_shards())
    done = set(arch.keys()) & keys
    stale: set[int] = set()
    for shard, claim in arch.claims().items():
        if shard in completed:
            continue
        if cfg.takeover or claim_is_stale(claim, stale_after_s=cfg.stale_claim_s):
            stale.add(shard)
        else:
            raise JobError(
                f"{cfg.url}: shard {shard} is being written by {claim.get('owner')!r} (host "
                f"{claim.get('host')}, pid {claim.get('pid')}, since {claim.get('claimed_at')}); "
                "one job per archive at a time. If that job is dead, rerun with --takeover")
    plans = plan_shards(items, done, completed, arch.shard_size, stale)
    return Prepared(cfg, items, problems, codec, arch, created, done, plans, retried,
                    not_images, changed, updated)


def _update_key_index(arch: Any) -> str:
    """Rebuild the archive's key table if shards were added or discarded (one lookup =
    one ranged GET for readers); a failure here loses no record, so it is reported in the
    summary, not raised."""
    try:
        return "built" if arch.ensure_index() else "up to date"
    except (ArchiveError, OSError) as e:
        return f"not built: {e}"


def _encode_on_ray(cfg: ArchiveJobConfig, codec: Any, plans: list[ShardPlan], job_id: str,
                   counters: Counters, before_commit: Callable[[ShardPlan], None] | None,
                   on_event: Callable[[dict[str, Any]], None] | None
                   ) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]], dict[str, Any],
                              float, float]:
    """Encode ``plans`` with an actor pool on Ray: (finished shards' results, retries, failed
    shards, what Ray was and did, when Ray was up, when the shards were done)."""
    with ray_session(cfg.address, num_cpus=cfg.num_cpus) as sess:
        t_ray = time.perf_counter()
        n_act, cpus, gpus = actor_layout(sess, actors=cfg.actors,
                                         cpus_per_actor=cfg.cpus_per_actor,
                                         gpus_per_actor=cfg.gpus_per_actor)
        check_fits(cpus, gpus)  # else the actors would wait for resources forever
        n_act = max(1, min(n_act, len(plans)))
        ray_info = {"mode": sess.mode, "actors": n_act, "cpus_per_actor": cpus,
                    "gpus_per_actor": gpus, "cluster": {k: v for k, v in sess.resources.items()
                                                        if k in ("CPU", "GPU")}}
        wref = weights_ref(cfg.model)
        actors = [
            ShardEncoder.options(
                num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0,
                scheduling_strategy="SPREAD", max_concurrency=2,
            ).remote(cfg.model, codec.weights_sha256, cfg.url, cfg.storage_options,
                     f"{job_id}/encoder-{i}", cfg.options, cfg.precision,
                     max(1, int(cpus)), before_commit)
            for i in range(n_act)
        ]
        bar = ProgressBar(counters, "archive", cfg.progress)
        counters.t0 = time.perf_counter()  # rates count actor start-up, not Ray start-up
        try:
            res = drive(actors, plans, lambda a, p: a.encode.remote(p, wref), counters=counters,
                        bar=bar, attempts=cfg.shard_attempts, inflight=cfg.inflight,
                        on_retry=lambda p: ShardPlan(p.shard, p.items, takeover=True),
                        on_event=on_event)
        finally:
            bar.close()
            for a in actors:
                ray.kill(a)
        results, retries = res.done, res.retries
        failed_shards = [{"shard": p.shard, "keys": len(p.items), "first_key": p.items[0].key,
                          "attempts": n, "error": err} for p, n, err in res.failed]
        ray_info["nodes_used"] = len(res.nodes)
        ray_info["placement"] = placement(res.done)
        return results, retries, failed_shards, ray_info, t_ray, time.perf_counter()


def run_archive_job(cfg: ArchiveJobConfig, *,
                    on_event: Callable[[dict[str, Any]], None] | None = None,
                    before_commit: Callable[[ShardPlan], None] | None = None) -> dict[str, Any]:
    """Run (or resume) an archive job; returns the summary (see ``docs/jobs.md``).

    ``on_event`` sees every worker event on the driver (tests inject faults with it);
    ``before_commit`` runs inside the actor before each shard commit (fault injection).
    """
    t_start = time.perf_counter()
    preflight(cfg.address)  # a cluster that cannot be joined: one line, no archive created
    prep = _prepare(cfg)
    cfg, items, problems, codec, plans = prep.cfg, prep.items, prep.problems, prep.codec, prep.plans
    job_id = f"archive-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    counters = Counters(sum(len(p.items) for p in plans))
    results: list[dict[str, Any]] = []
    failed_shards: list[dict[str, Any]] = []
    retries = 0
    ray_info: dict[str, Any] = {"mode": "not started (nothing to do)"}
    t_planned = time.perf_counter()
    t_ray = t_run = t_planned
    if plans:
        results, retries, failed_shards, ray_info, t_ray, t_run = _encode_on_ray(
            cfg, codec, plans, job_id, counters, before_commit, on_event)

    # Final state of this input in the archive (what a rerun would see).
    fresh = type(prep.arch).open(cfg.url, storage_options=cfg.storage_options)
    keys = [it.key for it in items]
    in_archive = set(fresh.keys())
    failed_records = [{"key": i.key, "error": i.error} for i in fresh.failed()
                      if i.key in set(keys)]
    missing = [k for k in keys if k not in in_archive]
    key_index = _update_key_index(fresh)
    notes = sorted((n for r in results for n in r.get("notes", [])), key=lambda n: n["key"])
    failures = sorted(failed_records + [{"key": p["key"], "error": p["error"]} for p in problems]
                      + [{"key": k, "error": "not archived (its shard failed; rerun the job)"}
                         for k in missing], key=lambda f: f["key"])
    seconds = time.perf_counter() - t_start
    return {
        "job_id": job_id,
        "archive": cfg.url,
        "created": prep.created,
        "model": {"id": codec.model_id, "weights_digest": weights_digest(codec)},
        "rate": None if cfg.rate is None else {
            "target_bpp": cfg.rate,
            "how": "encoder target" if cfg.options.rate is not None else
                   "prefix cap" if cfg.options.max_bpp is not None else "model choice"},
        "ray": ray_info,
        "inputs": len(items) + len(problems),
        "not_images": {"files": sum(prep.not_images.values()),
                       "by_extension": dict(prep.not_images.most_common())},
        "already_archived": len(prep.done),
        "retry_failed": prep.retried,
        "changed_sources": {"keys": prep.changed, "updated": prep.updated},
        "key_index": key_index,
        "shards": {"planned": len(plans), "written": len(results),
                   "failed": failed_shards, "retries": retries},
        "images": {"encoded": counters.images, "ok": counters.ok, "failed": counters.failed},
        "bytes_in": counters.bytes_in,
        "bytes_out": counters.bytes_out,
        "bpp": counters.bpp,
        "timing": {"plan_s": t_planned - t_start, "ray_start_s": t_ray - t_planned,
                   "run_s": t_run - t_ray},
        "seconds": seconds,
        "images_per_s": counters.images / seconds if seconds > 0 else 0.0,
        "failures": failures,
        "notes": notes,
        "metadata": {"policy": cfg.options.metadata,
                     "images": sum(r.get("metadata", {}).get("images", 0) for r in results),
                     "bytes": sum(r.get("metadata", {}).get("bytes", 0) for r in results)},
        "complete": not failures,
        "archive_summary": {k: v for k, v in fresh.summary().items() if k != "url"},
        "shard_results": [{k: r[k] for k in ("shard", "images", "ok", "failed", "seconds",
                                             "node", "attempt")} for r in results],
    }


def placement(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the work ran: one entry per (node, device, GPU ids) of the finished tasks."""
    seen = {(ev.get("node", ""), ev.get("device", "cpu"), tuple(ev.get("gpu_ids", ())))
            for ev in done}
    return [{"node": n, "device": d, "gpu_ids": list(g)} for n, d, g in sorted(seen)]


__all__ = ["ArchiveJobConfig", "JobError", "ShardEncoder", "run_archive_job"]
