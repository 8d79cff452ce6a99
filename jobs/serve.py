"""``cdc serve``: an archive over HTTP, decoded lazily by quality tier (Ray Serve), with a
gallery page for people.

Routes (FastAPI ingress):

* ``GET /`` -> the gallery (``jobs/gallery/``: one HTML page, one stylesheet, one JS module,
  no build step, nothing from elsewhere): a lazily loaded grid of ``preview`` thumbnails,
  a key filter, and a viewer that refines an image in place tier by tier.
* ``GET /images/{key}?tier=standard&format=png|webp|jpeg[&width=&steps=&gamma=&seed=&bpp=]`` ->
  the image (``width``: resized on the server after decoding, never enlarged; cached like
  every decoded image; ``bpp``: a progressive codec's stream decoded from its longest
  prefix within that rate, only the prefix read — 400 for other codecs). 404 unknown key,
  400 bad tier/format/settings/key, 422 a key whose image failed when it was archived (and
  FastAPI's parameter validation), 429 when this replica already has ``max_pending``
  decodes waiting, 503 from Serve itself when the deployment's queue
  (``max_queued_requests``) is full. Response headers say where the image came from
  (``X-CDC-Source``: cache, archive-cache, decoded), the decode batch it rode in
  (``X-CDC-Batch-Size``), the settings, the stream bytes read and their bpp, and the
  decode time (see :func:`jobs.serve_responses.image_headers`). A decoded image is a
  function of (model digest, key, stored stream, settings, format, width), so it carries a
  strong ``ETag`` made of exactly those (the stream by its stored CRC and length, metadata
  only) and ``Cache-Control: immutable``; ``If-None-Match`` is answered 304 before any
  payload read or decode.
* ``GET /images?prefix=&q=&offset=&limit=&details=&taken_from=&taken_to=`` ->
  ``{"keys": [...], "total": n, ...}``
  (``q``: case-insensitive substring; ``details``: also ``items`` with each key's status,
  size, ``taken`` (the capture date, where stored; never the position) and, for a failed
  record, why).
* ``GET /info`` -> what the gallery's header shows: archive name (the last component of its
  URL), codec, model, record and failed counts, tiers from cheapest to best.
* ``GET /tiers`` -> the archive's tiers; ``GET /healthz`` -> 200 with counters.

Error bodies are ``{"detail": "<one line>"}`` and never name server paths: the archive's URL
becomes its name, other paths their last component
(:func:`jobs.serve_responses.public_message`, with the other rules for what a response says).

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

# No ``from __future__ import annotations`` here: Serve ships the class to its replicas with
# cloudpickle, which keeps only the globals a method's code uses, so a route's annotation
# left as a string ("Request") would no longer resolve there and FastAPI would take the
# parameter for a query field. Evaluated annotations travel with the functions.
import asyncio
import hashlib
import html
import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from jobs.models import budget_of, is_local_file
from jobs.serve_responses import (
    ETAG_VERSION as ETAG_VERSION,  # re-exported: part of every image ETag (docs/jobs.md)
)
from jobs.serve_responses import (
    IMMUTABLE,
    NO_STORE,
    archive_name,
    etag_matches,
    failed_reason,
    http_error,
    image_etag,
    image_headers,
    public_message,
    remember_archive_urls,
    resize_image,
    tier_order,
)
from pipeline.archive import (
    MEDIA_TYPES,
    DecodeError,
    FailedRecordError,
    Reader,
    output_format,
    resolve_model,
)
from pipeline.archive.decoded_lru import DEFAULT_MAX_BYTES, DiskLRU, decoded_key
from pipeline.archive.listing import TakenDates, date_problem, taken_of
from pipeline.archive.tier_settings import DEFAULT_TIER, TierError
from storage import (
    Archive,
    ArchiveError,
    DuplicateKeyError,
    Record,
    RecordInfo,
    RecordNotFoundError,
    key_problem,
)

DEFAULT_PORT = 8000
MIN_WIDTH, MAX_WIDTH = 16, 4096
GALLERY_FILES = {"index.html": "text/html; charset=utf-8",
                 "app.js": "text/javascript; charset=utf-8",
                 "style.css": "text/css; charset=utf-8"}

log = logging.getLogger(__name__)


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
    decode_budget: dict[str, int] | None = None  # cdc.limits.DecodeBudget fields (None: defaults)
    storage_options: dict[str, Any] | None = None
    threads: int = 1


api = FastAPI(title="cdc-toolkit archive", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, as one line (its default body echoes inputs and internals)."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "header")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid value')}")
    return JSONResponse({"detail": public_message("; ".join(parts) or "invalid request")},
                        status_code=422, headers=NO_STORE)


@serve.deployment
@serve.ingress(api)
class ImageService:
    def __init__(self, url: str, model: str, weights: bytes | None, expected_sha256: str,
                 opts: ServeOptions) -> None:
        import torch

        from jobs.cluster import actor_device
        from jobs.models import load_decoding_codec

        torch.set_num_threads(max(1, opts.threads))
        device, _ = actor_device()
        # weights: the bytes of a local weights file (None for shipped names and URLs)
        codec = load_decoding_codec(model, device=device, threads=max(1, opts.threads),
                                    expected_sha256=expected_sha256, weights=weights,
                                    precision=opts.precision)
        codec.with_budget(budget_of(opts.decode_budget))
        arch = Archive.open(url, expected_digest=expected_sha256, read_only=not opts.write_cache,
                            storage_options=opts.storage_options)
        cache = DiskLRU(opts.cache_dir, opts.cache_bytes) if opts.cache else None
        self.reader = Reader(arch, codec, cache=cache, write_archive_cache=opts.write_cache)
        self.opts = opts
        self.url = url
        self.name = archive_name(url)
        self.urls = {url, arch.url}
        remember_archive_urls(self.urls)
        self.digest = expected_sha256
        self.pending = 0
        self.served = {"cache": 0, "archive-cache": 0, "decoded": 0, "not-modified": 0,
                       "rejected": 0}
        self.batches: list[int] = []
        self._counts: tuple[int, int] | None = None  # (records, failed), for /info
        self._dates = TakenDates()  # for the listing's capture-date filter
        gallery = resources.files("jobs") / "gallery"
        self.files = {n: (gallery / n).read_bytes() for n in GALLERY_FILES}
        self._decode_batch.set_max_batch_size(opts.max_batch_size)
        self._decode_batch.set_batch_wait_timeout_s(opts.batch_wait_s)
        self.reader.archive.keys()  # build the key index now, not on the first request

    def _public(self, text: str) -> str:
        return public_message(text, self.urls)

    # -- the gallery ----------------------------------------------------------------------
    @api.get("/")
    async def gallery(self, request: Request) -> Response:
        # relative links resolve against <base>: the route prefix the page is served under
        base = request.scope.get("root_path", "").rstrip("/") + "/"
        page = self.files["index.html"].decode().replace("%BASE%", html.escape(base))
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @api.get("/gallery/{name}")
    async def gallery_file(self, name: str, request: Request) -> Response:
        if name not in GALLERY_FILES or name == "index.html":
            raise http_error(404, f"no gallery file {name!r}")
        data = self.files[name]
        headers = {"ETag": '"' + hashlib.sha256(data).hexdigest()[:32] + '"',
                   "Cache-Control": "no-cache"}  # revalidated: a new version shows at once
        if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=GALLERY_FILES[name], headers=headers)

    # -- routes ---------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        codec = self.reader.codec
        return {"status": "ok", "archive": self.name, "model": codec.model_id,
                # "onnx": a shipped model's graphs decode what they cover (torch loads on
                # first need for the rest: "onnx+torch"); "torch": the torch codec only
                "engine": ("onnx+torch" if codec.torch_loaded else "onnx")
                if hasattr(codec, "torch_loaded") else "torch",
                "pending_decodes": self.pending, "served": self.served,
                "batches": {"count": len(self.batches), "max": max(self.batches, default=0)}}

    @api.get("/tiers")
    async def tiers(self) -> dict[str, Any]:
        return {"default": self.opts.default_tier, "tiers": self.reader.archive.tiers}

    @api.get("/info")
    async def info(self) -> dict[str, Any]:
        try:
            records, failed = await asyncio.to_thread(self._record_counts)
        except ArchiveError as e:
            raise http_error(500, self._public(str(e))) from None
        arch = self.reader.archive
        tiers = arch.tiers
        order = tier_order(tiers)
        return {"name": self.name, "codec": arch.codec_id, "model": self.reader.codec.model_id,
                "records": records, "failed": failed, "tiers": {n: tiers[n] for n in order},
                "order": order, "default_tier": self.opts.default_tier,
                "preview_tier": "preview" if "preview" in tiers else order[0]}

    def _record_counts(self) -> tuple[int, int]:
        arch = self.reader.archive
        n = len(arch)
        if self._counts is None or self._counts[0] != n:  # metadata only, once
            self._counts = (n, sum(1 for i in arch.infos() if not i.ok))
        return self._counts

    @api.get("/images")
    async def list_images(self, prefix: str = "", q: str = "", offset: int = Query(0, ge=0),
                          limit: int = Query(1000, ge=1, le=100_000),
                          details: bool = False, taken_from: str | None = None,
                          taken_to: str | None = None) -> dict[str, Any]:
        for problem in (date_problem("taken_from", taken_from),
                        date_problem("taken_to", taken_to)):
            if problem:
                raise http_error(400, problem)
        try:
            keys = await asyncio.to_thread(self.reader.archive.keys)
            if taken_from is not None or taken_to is not None:  # the photos of those dates
                keys = await asyncio.to_thread(self._dates.keys_between, self.reader.archive,
                                               keys, taken_from, taken_to)
        except ArchiveError as e:
            raise http_error(500, self._public(str(e))) from None
        if prefix:
            keys = [k for k in keys if k.startswith(prefix)]
        if q:
            needle = q.casefold()
            keys = [k for k in keys if needle in k.casefold()]
        page = keys[offset:offset + limit]
        out: dict[str, Any] = {"keys": page, "total": len(keys), "offset": offset,
                               "limit": limit}
        if details:
            out["items"] = await asyncio.to_thread(lambda: [self._item(k) for k in page])
        return out

    def _item(self, key: str) -> dict[str, Any]:
        try:
            info = self.reader.archive.info(key)
        except ArchiveError as e:
            return {"key": key, "ok": False, "error": self._public(str(e))}
        item: dict[str, Any] = {"key": key, "ok": info.ok, "width": info.width,
                                "height": info.height, "bytes": info.nbytes}
        if not info.ok:
            item["error"] = failed_reason(key, info.error, self.urls)
        if when := taken_of(self.reader.archive, key):  # never where a photo was taken
            item["taken"] = when
        return item

    @api.get("/images/{key:path}")
    async def get_image(self, key: str, request: Request, tier: str | None = None,
                        format: str = "png", steps: int | None = None,
                        gamma: float | None = None, seed: int | None = None,
                        width: int | None = Query(None, ge=MIN_WIDTH, le=MAX_WIDTH),
                        bpp: float | None = Query(None, gt=0, le=64)) -> Response:
        try:
            return await self._image(key, request, tier, format, steps, gamma, seed, width, bpp)
        except HTTPException:
            raise
        except Exception as e:  # noqa: BLE001 - one line for the client, the rest in the log
            log.exception("GET /images/%s", key)
            raise http_error(500, f"{key}: internal error ({type(e).__name__})") from None

    async def _image(self, key: str, request: Request, tier: str | None, format: str,
                     steps: int | None, gamma: float | None, seed: int | None,
                     width: int | None, bpp: float | None = None) -> Response:
        t0 = time.perf_counter()
        tier = tier or self.opts.default_tier
        try:
            fmt = output_format(format)
            settings, overridden = self.reader.settings(tier, steps=steps, gamma=gamma, seed=seed,
                                                        bpp=bpp)
        except (TierError, ValueError) as e:
            raise http_error(400, self._public(str(e))) from None
        if (why := key_problem(key)) is not None:
            raise http_error(400, f"bad key {key!r}: {why}")
        info = await asyncio.to_thread(self._info, key)  # metadata only
        if width is not None and width >= info.width:
            width = None  # never enlarged: the image itself
        etag = image_etag(self.digest, info, settings, fmt, width)
        caching = {"ETag": etag, "Cache-Control": IMMUTABLE}
        if etag_matches(request.headers.get("if-none-match"), etag):
            self.served["not-modified"] += 1
            return Response(status_code=304, headers=caching)
        rec = await asyncio.to_thread(self._stream, key, settings)
        data, small_key = None, None
        if width is not None and self.reader.cache is not None:
            small_key = decoded_key(key, hashlib.sha256(rec.data).hexdigest(), settings,
                                    self.digest, f"{fmt};width={width}")
            data = await asyncio.to_thread(self.reader.cache.get, small_key)
        if data is not None:
            source, batch, decode_s = "cache", 0, 0.0
        else:
            data, source, batch, decode_s = await self._decoded(
                rec, settings, "PNG" if width is not None else fmt, tier, overridden)
            if width is not None:
                data = await asyncio.to_thread(resize_image, data, width, fmt)
                if small_key is not None:
                    await asyncio.to_thread(self.reader.cache.put, small_key, data)
        self.served[source] += 1
        headers = image_headers(tier, settings, info, len(rec.data), source, batch, decode_s,
                                time.perf_counter() - t0)
        return Response(data, media_type=MEDIA_TYPES[fmt], headers={**caching, **headers})

    def _info(self, key: str) -> RecordInfo:
        try:
            info = self.reader.archive.info(key)
        except RecordNotFoundError:
            raise http_error(404, f"no image {key!r} in this archive") from None
        except DuplicateKeyError:
            raise http_error(409, f"{key}: stored more than once in this archive") from None
        except ArchiveError as e:
            raise http_error(500, self._public(str(e))) from None
        if not info.ok:
            raise http_error(422, f"{key}: image failed when archived: "
                                  f"{failed_reason(key, info.error, self.urls)}")
        return info

    def _stream(self, key: str, settings: Any) -> Record:
        """The stream the settings decode: a progressive codec's tier with a prefix budget
        reads only that prefix (two range reads), other tiers the whole record."""
        bpp = self.reader._prefix_bpp(settings)  # the Reader's rule (None: whole record)
        try:
            if bpp is not None:
                return self.reader.prefix_record(key, bpp)
            return self.reader.record(key)
        except FailedRecordError as e:
            raise http_error(422, self._public(str(e))) from None
        except RecordNotFoundError:
            raise http_error(404, f"no image {key!r} in this archive") from None
        except (ArchiveError, DecodeError) as e:
            raise http_error(500, self._public(str(e))) from None

    async def _decoded(self, rec: Record, settings: Any, fmt: str, tier: str,
                       overridden: bool) -> tuple[bytes, str, int, float]:
        """``(image bytes, source, batch size, decode seconds)``: from a cache, else
        decoded in a batch with whatever else is waiting."""
        use_ac = self.reader.archive_cache and not overridden
        hit, source, _ = await asyncio.to_thread(self.reader.lookup, rec, settings, fmt, tier,
                                                 use_ac)
        if hit is not None:
            return hit, source, 0, 0.0
        if self.pending >= self.opts.max_pending:
            self.served["rejected"] += 1
            raise http_error(429, "too many decodes waiting; retry shortly", {"Retry-After": "1"})
        self.pending += 1
        try:
            res, batch = await self._decode_batch((rec, settings, fmt, tier, overridden))
        finally:
            self.pending -= 1
        if isinstance(res, DecodeError):
            raise http_error(500, self._public(str(res)))
        if isinstance(res, Exception):
            log.error("decoding %s: %s: %s", rec.key, type(res).__name__, res)
            raise http_error(500, f"{rec.key}: decoding failed ({type(res).__name__})")
        return res.data, res.source, batch, res.seconds

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
    """The Serve application for the archive at ``url`` (checks model and tiers first).

    The driver only checks the weights' digest against the archive's (reading the file, not
    building the model), so the process that starts Serve imports no torch or CompressAI;
    the replicas load the model, since they decode."""
    from zoo import read_verified_bytes, sha256_hex

    opts = opts or ServeOptions()
    arch = Archive.open(url, read_only=True, storage_options=opts.storage_options)
    model = resolve_model(arch, model)
    digest = "sha256:" + sha256_hex(read_verified_bytes(model)[0])
    arch.check_model(digest)
    if opts.default_tier not in arch.tiers:
        raise TierError(f"{url}: no tier {opts.default_tier!r} "
                        f"(tiers: {', '.join(sorted(arch.tiers))})")
    weights = Path(model).read_bytes() if is_local_file(model) else None
    return ImageService.options(
        num_replicas=opts.replicas,
        max_ongoing_requests=opts.max_ongoing,
        max_queued_requests=opts.max_queued,
        ray_actor_options={"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus},
    ).bind(url, model, weights, digest, opts)


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
