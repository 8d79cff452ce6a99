"""The export job behind ``cdc export``: decode many archive records at a tier, on Ray.

Same shape as the encode job (see jobs/encode.py for why an actor pool): decoder actors
load the model once; the driver hands each one a chunk of keys from one shard (so a chunk
is a few ranged reads of one storage object), and each actor reads the records
(``read_many``), looks every key up in the decoded-image caches, decodes the misses with
one ``decompress_batch`` per batch (the codec stacks equal latent shapes) and writes
``DEST/<key with the format's extension>`` atomically. Outputs that already exist are
skipped unless ``overwrite``, so an interrupted export resumes where it stopped.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from jobs.cluster import actor_device, actor_layout, check_fits, ray_session
from jobs.driver import drive
from jobs.encode import JobError
from jobs.models import (
    budget_of,
    load_decoding_codec,
    load_driver_codec,
    weights_ref,
)
from jobs.progress import Counters, ProgressBar
from pipeline.archive import Reader, output_format, output_name, resolve_model, weights_digest
from pipeline.archive.decoded_lru import DEFAULT_MAX_BYTES, DiskLRU
from pipeline.archive.outputs import restore_file_time, stored_metadata
from pipeline.archive.tier_settings import TierError, settings_dict
from pipeline.photo_metadata import MetadataError, check_policy, embed
from storage import Archive, ArchiveError


@dataclass
class ExportJobConfig:
    url: str
    dest: str
    tier: str = "standard"
    fmt: str = "png"
    steps: int | None = None
    gamma: float | None = None
    seed: int | None = None
    model: str | None = None  # default: the archive's model, if shipped
    keys: list[str] | None = None
    prefix: str | None = None
    overwrite: bool = False
    address: str | None = None
    num_cpus: int | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    precision: str | None = None
    chunk: int = 16
    batch_size: int = 8
    attempts: int = 3
    inflight: int = 2
    cache: bool = True
    cache_dir: str | None = None
    cache_bytes: int = DEFAULT_MAX_BYTES
    write_cache: bool = False  # write decoded PNGs back to the archive's cache area
    decode_budget: dict[str, int] | None = None  # cdc.limits.DecodeBudget fields (None: defaults)
    storage_options: dict[str, Any] | None = None
    progress: bool | None = None
    metadata: str = "keep"  # capture metadata written into outputs: keep, no-gps, none


def write_output(dest: str, name: str, data: bytes, meta: dict | None = None) -> None:
    """Write ``dest/name`` atomically (local: dated as its source was, where ``meta`` knows
    it) or in one PUT (fsspec URL)."""
    if "://" in dest and not dest.startswith("file://"):
        import fsspec

        with fsspec.open(posixpath.join(dest, name), "wb") as f:
            f.write(data)
        return
    from pipeline.files import write_bytes_atomic

    path = Path(dest.removeprefix("file://")) / name
    write_bytes_atomic(path, data)
    restore_file_time(path, meta or {})


def output_exists(dest: str, name: str) -> bool:
    if "://" in dest and not dest.startswith("file://"):
        import fsspec

        fs, path = fsspec.core.url_to_fs(posixpath.join(dest, name))
        return fs.exists(path)
    return (Path(dest.removeprefix("file://")) / name).exists()


@ray.remote
class Exporter:
    """Loads the model once (on its first chunk); decodes chunks of keys, writes images."""

    def __init__(self, model: str, expected_sha256: str, url: str,
                 storage_options: dict[str, Any] | None, cfg: ExportJobConfig,
                 threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.model, self.expected, self.url = model, expected_sha256, url
        self.storage_options, self.cfg = storage_options, cfg
        self.fmt = output_format(cfg.fmt)
        self.node = ray.get_runtime_context().get_node_id()
        self.reader: Reader | None = None
        self.threads = max(1, threads)

    def _load(self, weights: list | None) -> None:
        cfg = self.cfg
        device, _ = actor_device()
        codec = load_decoding_codec(self.model, device=device, threads=self.threads,
                                    expected_sha256=self.expected, weights=weights,
                                    precision=cfg.precision)
        codec.with_budget(budget_of(cfg.decode_budget))
        arch = Archive.open(self.url, expected_digest=weights_digest(codec),
                            read_only=not cfg.write_cache, storage_options=self.storage_options)
        cache = DiskLRU(cfg.cache_dir, cfg.cache_bytes) if cfg.cache else None
        self.reader = Reader(arch, codec, cache=cache, write_archive_cache=cfg.write_cache)
        self.settings, self.overridden = self.reader.settings(
            cfg.tier, steps=cfg.steps, gamma=cfg.gamma, seed=cfg.seed)

    def export(self, chunk: list[tuple[str, str]], weights: list | None = None):
        """``chunk``: (key, output name) pairs; yields progress per decode batch."""
        if self.reader is None:
            self._load(weights)
        failures: list[dict[str, str]] = []
        n = 0
        for i in range(0, len(chunk), max(1, self.cfg.batch_size)):
            part = chunk[i:i + self.cfg.batch_size]
            keys = [k for k, _ in part]
            try:
                records = self.reader.archive.read_many(keys)
            except ArchiveError:
                records = None  # fall back to per-key reads (and per-key errors)
            res = self.reader.decode_many(keys, self.settings, fmt=self.fmt, tier=self.cfg.tier,
                                          overridden=self.overridden, records=records)
            ev = {"type": "progress", "images": 0, "ok": 0, "failed": 0, "bytes_in": 0,
                  "bytes_out": 0, "pixels": 0, "cache_hits": 0}
            for (key, name), r in zip(part, res):
                ev["images"] += 1
                if isinstance(r, Exception):
                    ev["failed"] += 1
                    failures.append({"key": key, "error": str(r)})
                    continue
                try:
                    meta = stored_metadata(self.reader.archive, key, self.cfg.metadata)
                    data = embed(r.data, self.fmt, meta)
                except (ArchiveError, MetadataError) as e:
                    ev["failed"] += 1
                    failures.append({"key": key, "error": f"{e} (--metadata none exports "
                                                          "the image without it)"})
                    continue
                try:
                    write_output(self.cfg.dest, name, data, meta)
                except OSError as e:
                    ev["failed"] += 1
                    failures.append({"key": key, "error": f"{self.cfg.dest}/{name}: {e}"})
                    continue
                ev["ok"] += 1
                ev["bytes_out"] += len(data)
                ev["pixels"] += r.width * r.height
                ev["cache_hits"] += r.source != "decoded"
            if records is not None:
                ev["bytes_in"] += sum(len(rec.data) for rec in records)
            n += ev["images"]
            yield ev
        yield {"type": "done", "images": n, "failures": failures, "node": self.node}


def _select(
    cfg: ExportJobConfig, arch: Archive, fmt: str
) -> tuple[list[list[tuple[str, str]]], list[dict[str, str]], int]:
    """Chunks of (key, output name) grouped by shard; failures; number skipped as existing."""
    failures: list[dict[str, str]] = []
    keys = arch.keys()
    if cfg.keys is not None:
        have = set(keys)
        failures += [{"key": k, "error": f"{cfg.url}: no record {k!r}"} for k in cfg.keys
                     if k not in have]
        want = set(cfg.keys)
        keys = [k for k in keys if k in want]
    if cfg.prefix:
        keys = [k for k in keys if k.startswith(cfg.prefix)]
    infos = {i.key: i for i in arch.infos()}
    names: dict[str, list[str]] = {}
    for k in keys:
        names.setdefault(output_name(k, fmt), []).append(k)
    out_name = {}
    for name, ks in names.items():  # a.png and a.jpg would both become a.png: keep the key
        for k in ks:
            out_name[k] = name if len(ks) == 1 else k + posixpath.splitext(name)[1]
    by_shard: dict[int, list[tuple[str, str]]] = {}
    skipped = 0
    for k in keys:
        info = infos[k]
        if not info.ok:
            failures.append({"key": k, "error": f"image failed when archived: {info.error}"})
            continue
        if not cfg.overwrite and output_exists(cfg.dest, out_name[k]):
            skipped += 1
            continue
        by_shard.setdefault(info.shard, []).append((k, out_name[k]))
    chunks = []
    for items in by_shard.values():
        chunks += [items[i:i + cfg.chunk] for i in range(0, len(items), max(1, cfg.chunk))]
    return chunks, failures, skipped


def run_export_job(cfg: ExportJobConfig, *,
                   on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Decode the selected records at a tier into ``cfg.dest``; returns the summary."""
    from cdc import WeightsError

    t0 = time.perf_counter()
    try:
        fmt = output_format(cfg.fmt)
        check_policy(cfg.metadata)
        arch = Archive.open(cfg.url, read_only=not cfg.write_cache,
                            storage_options=cfg.storage_options)
        model = resolve_model(arch, cfg.model)
        codec = load_driver_codec(model)
        arch.check_model(weights_digest(codec))
        reader = Reader(arch, codec)
        settings, overridden = reader.settings(cfg.tier, steps=cfg.steps, gamma=cfg.gamma,
                                               seed=cfg.seed)
    except (ArchiveError, WeightsError, TierError, ValueError) as e:
        raise JobError(str(e)) from None
    chunks, failures, skipped = _select(cfg, arch, fmt)
    not_decoded = len(failures)  # refused at selection; decode failures are in counters.total
    counters = Counters(sum(len(c) for c in chunks))
    ray_info: dict[str, Any] = {"mode": "not started (nothing to do)"}
    cache_hits = 0
    if chunks:
        with ray_session(cfg.address, num_cpus=cfg.num_cpus) as sess:
            n_act, cpus, gpus = actor_layout(sess, actors=cfg.actors,
                                             cpus_per_actor=cfg.cpus_per_actor,
                                             gpus_per_actor=cfg.gpus_per_actor)
            n_act = max(1, min(n_act, len(chunks)))
            check_fits(cpus, gpus)  # else the actors would wait for resources forever
            ray_info = {"mode": sess.mode, "actors": n_act, "cpus_per_actor": cpus,
                        "gpus_per_actor": gpus}
            wref = weights_ref(model)
            actors = [Exporter.options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1,
                                       max_task_retries=0, scheduling_strategy="SPREAD")
                      .remote(model, codec.weights_sha256, cfg.url, cfg.storage_options,
                              cfg, max(1, int(cpus))) for _ in range(n_act)]
            bar = ProgressBar(counters, "export", cfg.progress)

            def count(ev: dict[str, Any]) -> None:
                nonlocal cache_hits
                cache_hits += ev.get("cache_hits", 0)
                if on_event is not None:
                    on_event(ev)

            try:
                res = drive(actors, chunks, lambda a, c: a.export.remote(c, wref),
                            counters=counters, bar=bar, attempts=cfg.attempts,
                            inflight=cfg.inflight, on_event=count)
            finally:
                bar.close()
                for a in actors:
                    ray.kill(a)
            for ev in res.done:
                failures += ev["failures"]
            for chunk, _n, err in res.failed:
                failures += [{"key": k, "error": f"not exported: {err}"} for k, _ in chunk]
            ray_info["nodes_used"] = len(res.nodes)
    seconds = time.perf_counter() - t0
    return {
        "archive": cfg.url,
        "dest": cfg.dest,
        "tier": cfg.tier,
        "settings": settings_dict(settings),
        "overridden": overridden,
        "format": fmt.lower(),
        "metadata": cfg.metadata,
        "ray": ray_info,
        "selected": counters.total + skipped + not_decoded,
        "skipped_existing": skipped,
        "exported": counters.ok,
        "from_cache": cache_hits,
        "bytes_in": counters.bytes_in,
        "bytes_out": counters.bytes_out,
        "seconds": seconds,
        "images_per_s": counters.ok / seconds if seconds > 0 else 0.0,
        "failures": sorted(failures, key=lambda f: f["key"]),
        "complete": not failures,
    }


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    from jobs.progress import mb

    st = s["settings"]
    return [
        ("archive", s["archive"]),
        ("dest", s["dest"]),
        ("tier", f"{s['tier']} (steps {st['steps']}, gamma {st['gamma']}, seed {st['seed']})"
                 + (" overridden" if s["overridden"] else "")),
        ("ray", ", ".join(f"{k} {v}" for k, v in s["ray"].items())),
        ("selected", str(s["selected"])),
        ("skipped (already exported)", str(s["skipped_existing"])),
        ("exported (from cache)", f"{s['exported']} ({s['from_cache']})"),
        ("MB in / out", f"{mb(s['bytes_in'])} / {mb(s['bytes_out'])}"),
        ("capture metadata", s.get("metadata", "keep")),
        ("time", f"{s['seconds']:.1f} s ({s['images_per_s']:.2f} images/s)"),
        ("failures", str(len(s["failures"]))),
    ]


__all__ = ["ExportJobConfig", "Exporter", "run_export_job", "summary_rows"]
