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
from collections.abc import Callable
from typing import Any

import ray

from jobs.archive_config import ArchiveJobConfig, JobError
from jobs.archive_prepare import dry_run_summary, prepare
from jobs.archive_summary import same_bytes
from jobs.cluster import actor_device, actor_layout, check_fits, preflight, ray_session
from jobs.driver import drive
from jobs.models import load_codec, weights_ref
from jobs.progress import Counters, ProgressBar
from pipeline.archive import (
    EncodeOptions,
    ShardPlan,
    encode_shard,
    weights_digest,
)
from storage import (
    Archive,
    ArchiveError,
)


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
    if not cfg.dry_run:
        preflight(cfg.address)  # a cluster that cannot be joined: one line, no archive created
    prep = prepare(cfg)
    if cfg.dry_run:
        return dry_run_summary(prep, time.perf_counter() - t_start)
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
            "how": "cap" if cfg.psnr is not None else
                   "encoder target" if cfg.options.rate is not None else
                   "prefix cap" if cfg.options.max_bpp is not None else "model choice"},
        "ray": ray_info,
        "psnr": None if cfg.psnr is None else {"target_db": cfg.psnr},
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
        "same_bytes": same_bytes(results),
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
