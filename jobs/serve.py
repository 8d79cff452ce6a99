"""``cdc serve``: an archive over HTTP, decoded lazily by quality tier (Ray Serve).

Routes (FastAPI ingress):

* ``GET /images/{key}?tier=standard&format=png|webp|jpeg[&steps=&gamma=&seed=]`` -> the
  image. 404 unknown key, 400 bad tier/format/settings/key, 422 a key whose image failed
  when it was archived, 429 when this replica already has ``max_pending`` decodes waiting,
  503 from Serve itself when the deployment's queue (``max_queued_requests``) is full.
  Response headers say where the image came from (``X-CDC-Source``: cache, archive-cache,
  decoded), the decode batch it rode in (``X-CDC-Batch-Size``) and the settings.
* ``GET /images?prefix=&offset=&limit=`` -> ``{"keys": [...], "total": n, ...}``.
* ``GET /tiers`` -> the archive's tiers; ``GET /healthz`` -> 200 with counters.

Decoding: a request first checks the local disk LRU (and the archive's cache area), and
only a miss reaches ``_decode_batch``, a ``@serve.batch`` method: concurrent misses are
collected for up to ``batch_wait_s`` (at most ``max_batch_size``), grouped by (settings,
format), and each group runs as one ``decompress_batch`` - one U-Net pass per step for the
whole group on the replica's GPU - in a worker thread, so the event loop keeps answering
health checks and cache hits meanwhile. Memory is bounded twice: Serve queues at most
``max_queued_requests`` per deployment (then 503) and each replica holds at most
``max_ongoing_requests``, of which at most ``max_pending`` may wait for a decode (then 429
with ``Retry-After``). The HTTP proxy binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from ray import serve

from jobs.models import is_local_file
from pipeline.archive import (
    MEDIA_TYPES,
    DecodeError,
    FailedRecordError,
    Reader,
    output_format,
    resolve_model,
    weights_digest,
)
from pipeline.cache import DEFAULT_MAX_BYTES, DiskLRU
from pipeline.tiers import DEFAULT_TIER, TierError, settings_dict
from storage import Archive, BadKeyError, RecordNotFoundError

DEFAULT_PORT = 8000


@dataclass
class ServeOptions:
    default_tier: str = DEFAULT_TIER
    max_batch_size: int = 8
    batch_wait_s: float = 0.02
    max_pending: int = 32  # decodes waiting per replica before 429
    max_ongoing: int = 64  # requests inside one replica (Serve's max_ongoing_requests)
    max_queued: int = 128  # requests queued for the deployment before 503
    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    precision: str | None = None
    cache: bool = True
    cache_dir: str | None = None
    cache_bytes: int = DEFAULT_MAX_BYTES
    write_cache: bool = False
    storage_options: dict[str, Any] | None = None
    threads: int = 1


api = FastAPI(title="cdc-toolkit archive", docs_url=None, redoc_url=None)


@serve.deployment
@serve.ingress(api)
class ImageService:
    def __init__(self, url: str, model: str, weights: bytes | None, expected_sha256: str,
                 opts: ServeOptions) -> None:
        import ray
        import torch

        from jobs.models import load_codec

        torch.set_num_threads(max(1, opts.threads))
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        # weights: the bytes of a local weights file (None for shipped names and URLs)
        codec = load_codec(model, expected_sha256.removeprefix("sha256:"), weights,
                           device=device, precision=opts.precision)
        arch = Archive.open(url, expected_digest=expected_sha256, read_only=not opts.write_cache,
                            storage_options=opts.storage_options)
        cache = DiskLRU(opts.cache_dir, opts.cache_bytes) if opts.cache else None
        self.reader = Reader(arch, codec, cache=cache, write_archive_cache=opts.write_cache)
        self.opts = opts
        self.url = url
        self.pending = 0
        self.served = {"cache": 0, "archive-cache": 0, "decoded": 0, "rejected": 0}
        self.batches: list[int] = []
        self._decode_batch.set_max_batch_size(opts.max_batch_size)
        self._decode_batch.set_batch_wait_timeout_s(opts.batch_wait_s)
        self.reader.archive.keys()  # build the key index now, not on the first request

    # -- routes ---------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "archive": self.url, "model": self.reader.codec.model_id,
                "pending_decodes": self.pending, "served": self.served,
                "batches": {"count": len(self.batches), "max": max(self.batches, default=0)}}

    @api.get("/tiers")
    async def tiers(self) -> dict[str, Any]:
        return {"default": self.opts.default_tier, "tiers": self.reader.archive.tiers}

    @api.get("/images")
    async def list_images(self, prefix: str = "", offset: int = Query(0, ge=0),
                          limit: int = Query(1000, ge=1, le=100_000)) -> dict[str, Any]:
        keys = await asyncio.to_thread(self.reader.archive.keys)
        if prefix:
            keys = [k for k in keys if k.startswith(prefix)]
        return {"keys": keys[offset:offset + limit], "total": len(keys), "offset": offset,
                "limit": limit}

    @api.get("/images/{key:path}")
    async def get_image(self, key: str, tier: str | None = None, format: str = "png",
                        steps: int | None = None, gamma: float | None = None,
                        seed: int | None = None) -> Response:
        tier = tier or self.opts.default_tier
        try:
            fmt = output_format(format)
            settings, overridden = self.reader.settings(tier, steps=steps, gamma=gamma, seed=seed)
        except (TierError, ValueError) as e:
            raise HTTPException(400, str(e)) from None
        try:
            rec = await asyncio.to_thread(self.reader.record, key)
        except RecordNotFoundError:
            raise HTTPException(404, f"no image {key!r} in this archive") from None
        except BadKeyError as e:
            raise HTTPException(400, str(e)) from None
        except FailedRecordError as e:
            raise HTTPException(422, str(e)) from None
        use_ac = self.reader.archive_cache and not overridden
        hit, source, _ = await asyncio.to_thread(self.reader.lookup, rec, settings, fmt, tier,
                                                 use_ac)
        batch = 0
        if hit is None:
            if self.pending >= self.opts.max_pending:
                self.served["rejected"] += 1
                return JSONResponse({"detail": "too many decodes waiting; retry shortly"},
                                    status_code=429, headers={"Retry-After": "1"})
            self.pending += 1
            try:
                res, batch = await self._decode_batch((rec, settings, fmt, tier, overridden))
            finally:
                self.pending -= 1
            if isinstance(res, DecodeError):
                raise HTTPException(500, str(res))
            if isinstance(res, Exception):
                raise HTTPException(500, f"{key}: {type(res).__name__}: {res}")
            hit, source = res.data, res.source
        self.served[source] += 1
        s = settings_dict(settings)
        return Response(hit, media_type=MEDIA_TYPES[fmt], headers={
            "X-CDC-Source": source, "X-CDC-Batch-Size": str(batch), "X-CDC-Tier": tier,
            "X-CDC-Settings": f"steps={s['steps']},gamma={s['gamma']},seed={s['seed']}",
            "Cache-Control": "public, max-age=86400, immutable"})

    # -- batched decoding -----------------------------------------------------------------
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _decode_batch(self, items: list[tuple]) -> list[tuple[Any, int]]:
        groups: dict[tuple, list[int]] = {}
        for i, (_rec, settings, fmt, tier, overridden) in enumerate(items):
            groups.setdefault((settings.key(), fmt, tier, overridden), []).append(i)
        out: list[tuple[Any, int]] = [(None, 0)] * len(items)
        for idx in groups.values():
            _, settings, fmt, tier, overridden = items[idx[0]]
            recs = [items[i][0] for i in idx]
            try:
                res = await asyncio.to_thread(
                    self.reader.decode_many, [r.key for r in recs], settings, fmt=fmt,
                    tier=tier, overridden=overridden, records=recs)
            except Exception as e:  # noqa: BLE001 - every request of the group gets it
                res = [e] * len(idx)
            self.batches.append(len(idx))
            for i, r in zip(idx, res):
                out[i] = (r, len(idx))
        return out


def build_app(url: str, *, model: str | None = None, opts: ServeOptions | None = None):
    """The Serve application for the archive at ``url`` (checks model and tiers first)."""
    from jobs.models import load_driver_codec

    opts = opts or ServeOptions()
    arch = Archive.open(url, read_only=True, storage_options=opts.storage_options)
    model = resolve_model(arch, model)
    codec = load_driver_codec(model)
    arch.check_model(weights_digest(codec))
    if opts.default_tier not in arch.tiers:
        raise TierError(f"{url}: no tier {opts.default_tier!r} (tiers: {', '.join(sorted(arch.tiers))})")
    weights = Path(model).read_bytes() if is_local_file(model) else None
    return ImageService.options(
        num_replicas=opts.replicas,
        max_ongoing_requests=opts.max_ongoing,
        max_queued_requests=opts.max_queued,
        ray_actor_options={"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus},
    ).bind(url, model, weights, weights_digest(codec), opts)


def start_http(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    serve.start(http_options={"host": host, "port": port})


def deploy(url: str, *, model: str | None = None, opts: ServeOptions | None = None,
           name: str = "cdc", route_prefix: str = "/"):
    """Deploy on the current Ray/Serve (``start_http`` first); returns the handle."""
    return serve.run(build_app(url, model=model, opts=opts), name=name, route_prefix=route_prefix)


def run_server(url: str, *, model: str | None = None, opts: ServeOptions | None = None,
               host: str = "127.0.0.1", port: int = DEFAULT_PORT, address: str | None = None,
               num_cpus: int | None = None, on_ready=None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM), then shut Serve (and an embedded Ray)
    down."""
    import signal
    import threading

    from jobs.cluster import ray_session

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored

    with ray_session(address, num_cpus=num_cpus) as sess:
        opts = opts or ServeOptions()
        if opts.num_gpus == 0 and sess.gpus >= 1:
            opts.num_gpus = 1.0
        start_http(host, port)
        try:
            deploy(url, model=model, opts=opts)
            if on_ready is not None:
                on_ready(f"http://{host}:{port}")
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()


__all__ = ["ImageService", "ServeOptions", "build_app", "deploy", "run_server", "start_http"]
