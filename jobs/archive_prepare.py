"""The driver's side of an archive job before any encoding (no Ray): inputs, model,
archive, interrupted removals finished, failed and edited photos taken out to encode again,
and the shard plan; or, for ``--dry-run``, what a run would do."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from jobs.archive_config import ArchiveJobConfig, JobError
from jobs.models import load_driver_codec
from pipeline.archive import (
    ShardPlan,
    base_tiers,
    claim_is_stale,
    open_or_create,
    plan_inputs,
    plan_shards,
    weights_digest,
)
from pipeline.archive.opening import open_existing
from pipeline.archive.rate import RateError, check_psnr, check_rate, choose_model
from pipeline.archive.source_changes import changed_sources
from pipeline.archive.tier_settings import merge_tiers
from pipeline.files import check_max_pixels
from pipeline.photo_metadata import check_policy
from storage import (
    Archive,
    ArchiveError,
    ArchiveNotFoundError,
    NotAnArchiveError,
    StoreAccessError,
)


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


def _apply_psnr(cfg: ArchiveJobConfig, codec: Any) -> ArchiveJobConfig:
    """``--psnr``: the fidelity target of a rate-controlled codec's encoder (``--rate`` a
    cap); any other codec's rate is its model's, so the target is refused."""
    try:
        check_psnr(codec, cfg.psnr, cfg.rate)
    except RateError as e:
        raise JobError(str(e)) from None
    return replace(cfg, options=replace(cfg.options, rate=cfg.rate, psnr=cfg.psnr))


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


def _inputs_and_model(cfg: ArchiveJobConfig
                      ) -> tuple[ArchiveJobConfig, list[Any], list[dict[str, str]], Counter, Any]:
    """The job's checked settings (its rate applied), inputs, problems, skipped non-images
    and the driver's codec; the store's own problems first, before a model is loaded."""
    from cdc import WeightsError

    try:
        check_max_pixels(cfg.options.max_pixels)  # here, not in every actor's constructor
        check_policy(cfg.options.metadata)
    except ValueError as e:
        raise JobError(str(e)) from None
    try:  # the store's problems (no bucket, credentials, endpoint) before loading a model
        Archive.open(cfg.url, storage_options=cfg.storage_options, read_only=cfg.dry_run)
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
        if cfg.psnr is not None:
            cfg = _apply_psnr(cfg, codec)
        elif cfg.rate is not None:
            cfg, codec = _apply_rate(cfg, codec)
    except WeightsError as e:
        raise JobError(str(e)) from None
    return cfg, items, problems, not_images, codec


def _open_archive(cfg: ArchiveJobConfig, codec: Any) -> tuple[Any, bool]:
    """(archive, created); a dry run opens an existing one read-only and creates none
    (archive None)."""
    try:
        if cfg.dry_run:
            arch = open_existing(cfg.url, codec, storage_options=cfg.storage_options,
                                 read_only=True)
            return arch, arch is None
        tiers = merge_tiers(base_tiers(codec), cfg.tiers) if cfg.tiers else None
        return open_or_create(cfg.url, codec, shard_size=cfg.shard_size, tiers=tiers,
                              storage_options=cfg.storage_options,
                              info={"source": str(cfg.src),
                                    **({"rate_bpp": cfg.rate} if cfg.rate else {}),
                                    **({"psnr_db": cfg.psnr} if cfg.psnr else {})})
    except ArchiveError as e:
        raise JobError(str(e)) from None


def _reconcile(cfg: ArchiveJobConfig, arch: Any, items: list[Any], problems: list[dict]
               ) -> tuple[Any, set[str], dict[str, int], list[str], int, list[dict]]:
    """Before planning: finish interrupted removals, then take out the failed records to
    retry (--retry-failed) and the photos edited at their source (--update). Returns the
    archive (re-opened after a change), the keys that will be encoded again, the retry
    counts, the changed keys, how many of them are updated and the problems. A dry run
    changes nothing and only counts."""
    keys = {it.key for it in items}
    retried = {"images": 0, "shards_replaced": 0}
    again: set[str] = set()
    if arch is None:
        return arch, again, retried, [], 0, problems
    try:
        if arch.pending_removals() and not cfg.dry_run:  # a removal a crash cut short
            arch.finish_removals()
        if cfg.retry_failed:
            # Only the failed records leave (their shards are rewritten without them, the ok
            # records copied): re-encoding whole shards would lose every record whose
            # source file is gone since.
            failed = [i for i in arch.failed() if i.key in keys]
            again |= {i.key for i in failed}
            retried = {"images": len(failed), "shards_replaced": len({i.shard for i in failed})}
            if failed and not cfg.dry_run:
                arch.remove(sorted(again), owner="cdc archive --retry-failed")
                arch = type(arch).open(cfg.url, storage_options=cfg.storage_options)
        changed = changed_sources(arch, items, set(arch.keys()) & keys)
        updated = 0
        if changed and cfg.update:
            readable, unreadable = _readable_now(items, changed, cfg.options.max_pixels)
            problems = problems + unreadable
            updated = len(readable)
            again |= set(readable)
            if readable and not cfg.dry_run:
                arch.remove(readable, owner="cdc archive --update")
                arch = type(arch).open(cfg.url, storage_options=cfg.storage_options)
    except ArchiveError as e:
        raise JobError(str(e)) from None
    return arch, again, retried, changed, updated, problems


def _plans(cfg: ArchiveJobConfig, arch: Any, items: list[Any], again: set[str]
           ) -> tuple[set[str], list[ShardPlan]]:
    """(keys of this input already archived, the shards to encode); a live claim of
    another writer stops the job."""
    if arch is None:
        return set(), plan_shards(items, set(), set(), cfg.shard_size)
    completed = set(arch.completed_shards())
    done = (set(arch.keys()) & {it.key for it in items}) - again
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
    return done, plan_shards(items, done, completed, arch.shard_size, stale)


def prepare(cfg: ArchiveJobConfig) -> Prepared:
    """Driver-side planning: inputs, model identity, archive, shards (no Ray needed)."""
    cfg, items, problems, not_images, codec = _inputs_and_model(cfg)
    arch, created = _open_archive(cfg, codec)
    arch, again, retried, changed, updated, problems = _reconcile(cfg, arch, items, problems)
    done, plans = _plans(cfg, arch, items, again)
    return Prepared(cfg, items, problems, codec, arch, created, done, plans, retried,
                    not_images, changed, updated)


def dry_run_summary(prep: Prepared, seconds: float) -> dict[str, Any]:
    """What a run with these settings would do, from the plan alone (nothing written)."""
    cfg = prep.cfg
    return {
        "dry_run": True,
        "archive": cfg.url,
        "created": prep.created,  # here: it would be created
        "model": {"id": prep.codec.model_id, "weights_digest": weights_digest(prep.codec)},
        "inputs": len(prep.items) + len(prep.problems),
        "not_images": {"files": sum(prep.not_images.values()),
                       "by_extension": dict(prep.not_images.most_common())},
        "already_archived": len(prep.done),
        "retry_failed": prep.retried,
        "changed_sources": {"keys": prep.changed, "updated": prep.updated},
        "shards": {"planned": len(prep.plans)},
        "images": {"to_encode": sum(len(p.items) for p in prep.plans)},
        "failures": sorted(({"key": p["key"], "error": p["error"]} for p in prep.problems),
                           key=lambda f: f["key"]),
        "seconds": seconds,
    }


__all__ = ["Prepared", "dry_run_summary", "prepare"]
