"""Archive stages: image files -> records in a chunked archive, and records -> images.

Forward (what ``cdc archive`` runs on every encoder, with or without Ray):

1. :func:`plan_inputs` lists the sources and gives every file a key (its path relative to
   the source root, e.g. ``holiday/beach.png``), refusing duplicate and malformed keys.
2. :func:`plan_shards` drops keys already in the archive and cuts the rest into shards
   of ``shard_size`` consecutive keys, numbered with free shard numbers.
3. :func:`encode_shard` runs one shard: read + validate images in windows (a thread pool
   prefetches the next window while the current one encodes), group them by padded size
   (:func:`group_batches`) so ``compress_batch`` stacks equal shapes into one forward
   pass, encode, make one :class:`storage.Record` per image (a *failed* record, with the
   error, for an image that cannot be read or encoded), and commit the shard in one piece
   with ``Archive.write_shard``. It yields progress events while it works.

Backward (what ``cdc get``, ``cdc export`` and ``cdc serve`` run): :class:`Reader` looks a
key up, reads its record (one ranged read), and decodes it at a quality tier, through a
local disk LRU and optionally the archive's own cache area.

Nothing here imports Ray: the jobs layer distributes these stages.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from cdc import BitstreamError, CodecError
from cdc.image import MAX_SIDE
from cdc.interface import DecodeSettings
from pipeline.cache import DiskLRU, decoded_key
from pipeline.files import InputError, decode_image, encode_image, read_bytes
from pipeline.rate import cap_stream
from pipeline.sources import list_images
from pipeline.tiers import DEFAULT_TIER, DEFAULT_TIERS, check_tiers, resolve
from storage import Archive, ArchiveError, Record, key_problem

DEFAULT_SHARD_SIZE = 64
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_BATCH_PIXELS = 8 * 1024 * 1024  # one forward pass stacks at most ~8 MP
DEFAULT_READ_RETRIES = 2
DEFAULT_MAX_PIXELS = 1 << 28  # Pillow's decompression-bomb limit in pipeline.files


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputItem:
    """One image to archive: its archive key and where to read it."""

    key: str
    url: str


def _strip_protocol(p: str) -> str:
    return p.split("://", 1)[1] if "://" in p else p


def _source_root(src: str, files: Sequence[str]) -> str:
    """The folder keys are made relative to (protocol stripped)."""
    import fsspec

    s = os.fspath(src)
    if any(c in s for c in "*?["):
        head = s
        for i, c in enumerate(s):
            if c in "*?[":
                head = s[:i]
                break
        head = head.rsplit("/", 1)[0] if "/" in head else "."
        _, path = fsspec.core.url_to_fs(head)
        return _strip_protocol(path)
    fs, path = fsspec.core.url_to_fs(s)
    if not s.lower().endswith((".txt", ".lst")) and fs.isdir(path):
        return _strip_protocol(path)
    dirs = [posixpath.dirname(_strip_protocol(f)) for f in files]
    try:
        return posixpath.commonpath(dirs) if dirs else ""
    except ValueError:  # mixed absolute/relative entries
        return ""


def plan_inputs(src: str) -> tuple[list[InputItem], list[dict[str, str]]]:
    """List ``src`` (folder, glob, fsspec URL or .txt/.lst list file) into keyed items.

    Returns ``(items sorted by key, problems)``; a problem is ``{"url", "error"}`` for a
    file whose key would be malformed or clashes with another file's key (such files
    cannot be stored, so they are reported instead). Raises FileNotFoundError when the
    source matches nothing.
    """
    files = list_images(src)
    root = _source_root(src, files)
    items: dict[str, InputItem] = {}
    problems: list[dict[str, str]] = []
    for f in files:
        p = _strip_protocol(f)
        key = posixpath.relpath(p, root) if root else p.lstrip("/")
        if (why := key_problem(key)) is not None:
            problems.append({"url": f, "key": key, "error": f"cannot be archived: {why}"})
            continue
        if key in items:
            problems.append({"url": f, "key": key,
                             "error": f"same key as {items[key].url}; archive them separately"})
            continue
        items[key] = InputItem(key, f)
    return sorted(items.values(), key=lambda it: it.key), problems


@dataclass(frozen=True)
class ShardPlan:
    """One unit of work: shard number + its items (in key order)."""

    shard: int
    items: tuple[InputItem, ...]
    takeover: bool = False

    @property
    def keys(self) -> list[str]:
        return [it.key for it in self.items]


def free_shard_numbers(completed: set[int], n: int) -> list[int]:
    """The ``n`` smallest shard numbers not completed (gaps left by crashes come first)."""
    out, k = [], 0
    while len(out) < n:
        if k not in completed:
            out.append(k)
        k += 1
    return out


def plan_shards(items: Sequence[InputItem], done_keys: set[str], completed: set[int],
                shard_size: int, stale_claims: set[int] = frozenset()) -> list[ShardPlan]:
    """Cut the items not yet archived into shards of ``shard_size`` consecutive keys.

    Deterministic for a given (items, archive state), so a rerun after a crash plans the
    same work for what is left. Shards with a stale claim (a dead writer's) are re-used
    with ``takeover``.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    todo = [it for it in items if it.key not in done_keys]
    chunks = [tuple(todo[i:i + shard_size]) for i in range(0, len(todo), shard_size)]
    numbers = free_shard_numbers(completed, len(chunks))
    return [ShardPlan(k, c, takeover=k in stale_claims) for k, c in zip(numbers, chunks)]


# ----------------------------------------------------------------------------------------
# Read + validate
# ----------------------------------------------------------------------------------------
@dataclass
class Loaded:
    key: str
    image: Image.Image | None
    nbytes: int = 0
    width: int = 0
    height: int = 0
    error: str = ""


def validate_image(img: Image.Image, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse images the codec cannot or should not code; the message names the file."""
    w, h = img.size
    if w < 1 or h < 1:
        raise InputError(f"{name}: empty image ({w}x{h})")
    if w > MAX_SIDE or h > MAX_SIDE:
        raise InputError(f"{name}: {w}x{h} exceeds the codec's {MAX_SIDE} px side limit")
    if w * h > max_pixels:
        raise InputError(f"{name}: {w}x{h} exceeds the {max_pixels} pixel limit")


def load_item(item: InputItem, *, retries: int = DEFAULT_READ_RETRIES, backoff_s: float = 0.2,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> Loaded:
    """Read, decode and validate one image; never raises (errors become ``Loaded.error``).

    Read failures are retried ``retries`` times (object stores have transient errors);
    a file that reads fine but is not a valid image fails at once.
    """
    data = None
    for attempt in range(retries + 1):
        try:
            data = read_bytes(item.url)
            break
        except InputError as e:
            if "no such file" in str(e) or attempt == retries:
                return Loaded(item.key, None, error=str(e))
            time.sleep(backoff_s * (attempt + 1))
    assert data is not None
    try:
        img = decode_image(data, item.url)
        validate_image(img, item.url, max_pixels)
    except InputError as e:
        return Loaded(item.key, None, nbytes=len(data), error=str(e))
    return Loaded(item.key, img, nbytes=len(data), width=img.width, height=img.height)


# ----------------------------------------------------------------------------------------
# Batch by size + encode
# ----------------------------------------------------------------------------------------
def pad_multiple(codec: Any) -> int:
    """The size multiple ``codec`` pads images to (images of one padded size stack).

    Codecs are used through the ``cdc.ImageCodec`` protocol (CDC, DiffC, CorrDiff); only
    CDC's config is known here, other codecs may expose ``pad_multiple`` themselves.
    """
    for obj in (codec, getattr(codec, "config", None)):
        m = getattr(obj, "pad_multiple", None)
        if isinstance(m, int) and m > 0:
            return m
    return 64


def codec_config(codec: Any) -> dict[str, Any]:
    """What an archive records about the codec's decoding defaults (any codec)."""
    cfg = getattr(codec, "config", None)
    out: dict[str, Any] = {"pad_multiple": pad_multiple(codec)}
    for name in ("default_steps", "default_gamma"):
        v = getattr(cfg, name, getattr(codec, name, None))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = v
    return out


def padded(h: int, w: int, multiple: int) -> tuple[int, int]:
    return h + (-h) % multiple, w + (-w) % multiple


def group_batches(sizes: Sequence[tuple[int, int]], multiple: int,
                  batch_size: int = DEFAULT_BATCH_SIZE,
                  max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS) -> list[list[int]]:
    """Indices grouped by padded (h, w) so each batch stacks, capped by count and pixels.

    Order is kept within a group; groups come in order of first appearance.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        groups.setdefault(padded(h, w, multiple), []).append(i)
    out: list[list[int]] = []
    for (ph, pw), idx in groups.items():
        per = max(1, min(batch_size, max_batch_pixels // max(1, ph * pw)))
        out += [idx[i:i + per] for i in range(0, len(idx), per)]
    return out


def encode_images(codec: Any, images: Sequence[Image.Image],
                  batch_size: int = DEFAULT_BATCH_SIZE,
                  max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
                  max_bpp: float | None = None) -> list[bytes | str]:
    """Encode images in size-grouped batches; an item is its bitstream or an error string.

    A batch that fails (one unencodable image, out of memory) is retried image by image so
    one bad image costs only itself. ``max_bpp`` (progressive codecs only) keeps the longest
    decodable prefix of each stream within that rate (:func:`pipeline.rate.cap_stream`).
    """
    if max_bpp is not None and not getattr(codec, "progressive", False):
        raise ValueError(f"{codec.model_id}: max_bpp needs a progressive codec (DiffC)")
    out: list[bytes | str] = [""] * len(images)
    sizes = [(im.height, im.width) for im in images]
    for batch in group_batches(sizes, pad_multiple(codec), batch_size, max_batch_pixels):
        try:
            for i, data in zip(batch, codec.compress_batch([images[i] for i in batch])):
                out[i] = data
            continue
        except (CodecError, RuntimeError, ValueError, MemoryError):
            pass  # retried below, one image at a time
        for i in batch:
            try:
                out[i] = codec.compress(images[i])
            except (CodecError, RuntimeError, ValueError, MemoryError) as e:
                out[i] = f"encoding failed: {type(e).__name__}: {e}"
    if max_bpp is not None:
        out = [cap_stream(codec, r, max_bpp) if isinstance(r, bytes) else r for r in out]
    return out


def make_record(loaded: Loaded, result: bytes | str | None) -> Record:
    if loaded.error:
        return Record.failed(loaded.key, loaded.error, height=loaded.height, width=loaded.width)
    if isinstance(result, bytes) and result:
        return Record(key=loaded.key, data=result, height=loaded.height, width=loaded.width)
    return Record.failed(loaded.key, str(result or "encoding failed"), height=loaded.height,
                         width=loaded.width)


@dataclass
class EncodeOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS
    read_retries: int = DEFAULT_READ_RETRIES
    read_threads: int = 4
    window: int = 0  # images read ahead per step; 0: 4 x batch_size
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bpp: float | None = None  # progressive codecs: keep the prefix within this rate


def _windows(items: Sequence[InputItem], size: int) -> list[Sequence[InputItem]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def encode_shard(codec: Any, archive: Archive, plan: ShardPlan, *, owner: str | None = None,
                 options: EncodeOptions | None = None,
                 before_commit: Callable[[], None] | None = None,
                 compute_lock: threading.Lock | None = None) -> Iterator[dict[str, Any]]:
    """Encode and commit one shard; yields ``{"type": "progress", ...}`` events after each
    window and finally ``{"type": "shard", ...}`` with the shard's totals and failures.

    Records are written in key order whatever the batching, so a re-run of the same plan
    produces the same key list (``Archive.write_shard`` then accepts it as a no-op).
    ``compute_lock`` is held while reading and encoding and released for the commit, so a
    worker running two shards in two threads overlaps one's commit (I/O, e.g. an upload
    to S3) with the next one's encoding, without running two encodes at once.
    """
    match_tiers(codec, archive.tiers)
    held = _Held()
    try:
        yield from _encode_shard(codec, archive, plan, owner, options, before_commit,
                                 compute_lock, held)
    finally:
        held.release()


class _Held:
    """The lock this generator holds (until ``release``, once), if any."""

    lock: threading.Lock | None = None

    def acquire(self, lock: threading.Lock | None) -> None:
        if lock is not None:
            lock.acquire()
            self.lock = lock

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _encode_shard(codec: Any, archive: Archive, plan: ShardPlan, owner: str | None,
                  options: EncodeOptions | None, before_commit: Callable[[], None] | None,
                  compute_lock: threading.Lock | None, held: _Held) -> Iterator[dict[str, Any]]:
    opt = options or EncodeOptions()
    window = opt.window or max(1, 4 * opt.batch_size)
    pid = os.getpid()
    records: list[Record] = []
    failures: list[dict[str, str]] = []
    totals = {"images": 0, "ok": 0, "failed": 0, "bytes_in": 0, "bytes_out": 0, "pixels": 0}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, opt.read_threads), thread_name_prefix="cdc-read") as pool:
        def load(win: Sequence[InputItem]):
            return [pool.submit(load_item, it, retries=opt.read_retries,
                                max_pixels=opt.max_pixels) for it in win]

        wins = _windows(plan.items, window)
        pending = load(wins[0]) if wins else []  # read while the previous shard encodes
        held.acquire(compute_lock)
        for wi in range(len(wins)):
            loaded = [f.result() for f in pending]
            pending = load(wins[wi + 1]) if wi + 1 < len(wins) else []  # read ahead
            good = [i for i, ld in enumerate(loaded) if not ld.error]
            results: list[bytes | str | None] = [None] * len(loaded)
            if good:
                enc = encode_images(codec, [loaded[i].image for i in good], opt.batch_size,
                                    opt.max_batch_pixels, opt.max_bpp)
                for i, r in zip(good, enc):
                    results[i] = r
            step = {"images": 0, "ok": 0, "failed": 0, "bytes_in": 0, "bytes_out": 0,
                    "pixels": 0}
            for ld, r in zip(loaded, results):
                rec = make_record(ld, r)
                records.append(rec)
                step["images"] += 1
                step["bytes_in"] += ld.nbytes
                if rec.ok:
                    step["ok"] += 1
                    step["bytes_out"] += len(rec.data)
                    step["pixels"] += rec.width * rec.height
                else:
                    step["failed"] += 1
                    failures.append({"key": rec.key, "error": rec.error})
                ld.image = None  # free the pixels now
            for k, v in step.items():
                totals[k] += v
            yield {"type": "progress", "shard": plan.shard, "pid": pid, **step}
    held.release()  # the next shard may encode while this one commits
    if before_commit is not None:
        before_commit()
    manifest = archive.write_shard(plan.shard, records, owner=owner, takeover=plan.takeover)
    yield {"type": "shard", "shard": plan.shard, "pid": pid, **totals,
           "failures": failures, "seconds": time.perf_counter() - t0,
           "committed_at": manifest.get("committed_at"), "owner": manifest.get("owner")}


# ----------------------------------------------------------------------------------------
# Archive creation / checks
# ----------------------------------------------------------------------------------------
def weights_digest(codec: Any) -> str:
    return "sha256:" + codec.weights_sha256


#: A progressive codec's ``preview`` tier reads only this many bits per pixel of a record.
PROGRESSIVE_PREVIEW_BPP = 0.5


def base_tiers(codec: Any) -> dict[str, dict[str, Any]]:
    """The tiers the model's weights recommend (measured for that model), else the defaults."""
    rec = (getattr(codec, "meta", None) or {}).get("tiers")
    return {k: dict(v) for k, v in (rec or DEFAULT_TIERS).items()}


def tier_paths(tiers: Mapping[str, Mapping[str, Any]]) -> list[tuple[int, float, int]]:
    """The distinct (steps, γ, seed) decode paths of a tier table, the default tier first.

    At γ = 0 the start noise is zero, so the seed is irrelevant and normalised to 0 (two
    tiers that differ only there are one path).
    """
    names = sorted(tiers, key=lambda n: (n != DEFAULT_TIER, n))
    out: list[tuple[int, float, int]] = []
    for n in names:
        t = tiers[n]
        gamma = round(float(t.get("gamma", 0.0)), 2)  # as section W stores it
        path = (int(t["steps"]), gamma, int(t.get("seed", 0)) if gamma else 0)
        if path not in out:
            out.append(path)
    return out


def match_tiers(codec: Any, tiers: Mapping[str, Mapping[str, Any]]) -> None:
    """Make a codec whose streams depend on how they will be decoded encode for the
    archive's tiers: CorrDiff's encoder picks its correction weights along each decode
    path it simulates (one simulated decode per path, ~5 bytes each), so every tier gets
    the corrected decode rather than plain CDC. Other codecs have nothing to set."""
    set_paths = getattr(codec, "set_paths", None)
    if set_paths is not None and tiers:
        paths = tier_paths(tiers)
        if list(getattr(codec, "paths", [])) != paths:
            set_paths(paths)


def tiers_for(codec: Any, tiers: Mapping[str, Mapping[str, Any]] | None = None
              ) -> dict[str, dict[str, Any]]:
    """The tier table a new archive gets: ``tiers``, else :func:`base_tiers`; for a
    progressive codec (DiffC) ``preview`` also gets a prefix budget, so previews
    range-read the first bytes of each record only."""
    out = {k: dict(v) for k, v in (tiers or base_tiers(codec)).items()}
    if getattr(codec, "progressive", False) and "preview" in out:
        out["preview"].setdefault("bpp", PROGRESSIVE_PREVIEW_BPP)
    return out


def open_or_create(url: str, codec: Any, *, shard_size: int = DEFAULT_SHARD_SIZE,
                   tiers: Mapping[str, Mapping[str, Any]] | None = None,
                   max_shard_bytes: int | None = None,
                   storage_options: dict[str, Any] | None = None,
                   info: Mapping[str, Any] | None = None) -> tuple[Archive, bool]:
    """Open the archive at ``url`` for ``codec`` (its model must match), or create it.

    Returns ``(archive, created)``. ``tiers`` (already validated) replace the defaults at
    creation, and are merged into an existing archive's tiers.
    """
    from storage import NotAnArchiveError

    try:
        arch = Archive.open(url, expected_digest=weights_digest(codec),
                            storage_options=storage_options)
    except NotAnArchiveError as e:
        if "does not exist" not in str(e):
            raise
    else:
        if arch.codec_id != codec.codec_id:
            raise ArchiveError(f"{url}: holds {arch.codec_id!r} streams, not {codec.codec_id!r}")
        if tiers:
            new = check_tiers(tiers)
            if any(arch.tiers.get(k) != v for k, v in new.items()):
                arch.set_tiers(new)
        return arch, False
    arch = Archive.create(
        url, codec_id=codec.codec_id, model_id=codec.model_id,
        weights_digest=weights_digest(codec),
        codec_config=codec_config(codec),
        tiers=check_tiers(tiers_for(codec, tiers)), shard_size=shard_size,
        max_shard_bytes=max_shard_bytes, info=info, storage_options=storage_options,
    )
    return arch, True


def claim_is_stale(claim: Mapping[str, Any], *, stale_after_s: float, now: float | None = None) -> bool:
    """Whether a shard claim was left by a dead writer.

    Encoders claim a shard only for its commit (they encode first, then write in one
    piece), so a claim is held for seconds. It is stale when its process is gone (same
    host) or it is older than ``stale_after_s``.
    """
    import calendar
    import socket

    if claim.get("host") == socket.gethostname() and isinstance(claim.get("pid"), int):
        try:
            os.kill(claim["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    at = claim.get("claimed_at")
    try:
        t = calendar.timegm(time.strptime(at, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return True  # unreadable claim: nobody can be relying on it
    return (now if now is not None else time.time()) - t > stale_after_s


# ----------------------------------------------------------------------------------------
# Backward: records -> images
# ----------------------------------------------------------------------------------------
class FailedRecordError(ArchiveError):
    """The key exists but holds an image that failed at archive time (no bitstream)."""


class DecodeError(Exception):
    """A stored bitstream could not be decoded; names the key."""


OUTPUT_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG", "jpg": "JPEG"}
MEDIA_TYPES = {"PNG": "image/png", "WEBP": "image/webp", "JPEG": "image/jpeg"}


def output_format(name: str) -> str:
    fmt = OUTPUT_FORMATS.get(name.lower().lstrip("."))
    if fmt is None:
        raise ValueError(f"unknown image format {name!r}; use one of png, webp, jpeg")
    return fmt


def resolve_model(archive: Archive, model: str | None) -> str:
    """The model to decode ``archive`` with: ``model`` when given, else the archive's own
    model id if it is a shipped model."""
    if model:
        return model
    from cdc.zoo import registry

    if archive.model_id in registry():
        return archive.model_id
    raise ArchiveError(
        f"{archive.url}: written with model {archive.model_id!r} "
        f"({archive.weights_digest[:19]}…), which is not a shipped model; pass --model with "
        "its weights path or URL"
    )


@dataclass
class Decoded:
    key: str
    data: bytes  # encoded image (format below)
    format: str
    source: str  # "cache" (local LRU), "archive-cache" or "decoded"
    width: int = 0
    height: int = 0
    seconds: float = 0.0


@dataclass
class Reader:
    """Decode archive records at a tier, through the caches; nothing is decoded early.

    ``cache``: a :class:`DiskLRU` (None: no local cache). ``archive_cache``: read the
    archive's cache area (``Archive.cache_get``); ``write_archive_cache``: also write
    decoded PNGs there (the archive must be writable). The archive cache is only used for
    a tier exactly as stored (no per-request overrides), because it is keyed by tier.
    """

    archive: Archive
    codec: Any
    cache: DiskLRU | None = None
    archive_cache: bool = True
    write_archive_cache: bool = False
    stats: dict[str, int] = field(default_factory=lambda: {"cache": 0, "archive-cache": 0,
                                                             "decoded": 0})

    def __post_init__(self) -> None:
        self.archive.check_model(weights_digest(self.codec))
        self._digest = self.codec.weights_sha256

    def settings(self, tier: str, *, steps: int | None = None, gamma: float | None = None,
                 seed: int | None = None) -> tuple[DecodeSettings, bool]:
        """(settings, overridden) of ``tier`` in this archive; TierError if unknown/bad."""
        return resolve(self.archive.tiers, tier, steps=steps, gamma=gamma, seed=seed)

    def record(self, key: str) -> Record:
        rec = self.archive[key]
        if not rec.ok:
            raise FailedRecordError(f"{self.archive.url}: {key}: image failed when archived: "
                                    f"{rec.error}")
        return rec

    def lookup(self, rec: Record, settings: DecodeSettings, fmt: str, tier: str | None,
               use_archive_cache: bool) -> tuple[bytes | None, str, str]:
        """A cached decode of ``rec``: ``(bytes or None, source, local cache key)``."""
        sha = hashlib.sha256(rec.data).hexdigest()
        want = decoded_key(rec.key, sha, settings, self._digest, fmt)
        png = decoded_key(rec.key, sha, settings, self._digest, "PNG")
        if self.cache is not None:
            if (hit := self.cache.get(want)) is not None:
                return hit, "cache", want
            if fmt != "PNG" and (hit := self.cache.get(png)) is not None:
                return _transcode(hit, fmt), "cache", want
        if use_archive_cache and tier is not None:
            try:
                hit = self.archive.cache_get(rec.key, tier)
            except (ArchiveError, OSError):
                hit = None
            if hit is not None:
                if self.cache is not None:
                    self.cache.put(png, hit)
                return (hit if fmt == "PNG" else _transcode(hit, fmt)), "archive-cache", want
        return None, "", want

    def decode_many(self, keys: Sequence[str], settings: DecodeSettings, *, fmt: str = "PNG",
                    tier: str | None = None, overridden: bool = False,
                    records: Sequence[Record] | None = None) -> list[Decoded | Exception]:
        """Decode several keys at one setting (one ``decompress_batch`` for the misses).

        Items are :class:`Decoded`, or the exception for that key (not found, failed
        record, corrupt stream) so one bad key does not sink its batch.
        """
        use_ac = self.archive_cache and not overridden
        out: list[Decoded | Exception | None] = [None] * len(keys)
        recs: list[Record | None] = list(records) if records is not None else [None] * len(keys)
        todo: list[tuple[int, Record, str]] = []
        for i, k in enumerate(keys):
            try:
                if recs[i] is None and self._prefix_bpp(settings) is not None:
                    recs[i] = self.prefix_record(k, self._prefix_bpp(settings))
                rec = recs[i] if recs[i] is not None else self.archive[k]
                if not rec.ok:
                    raise FailedRecordError(f"{self.archive.url}: {k}: image failed when "
                                            f"archived: {rec.error}")
                hit, src, ck = self.lookup(rec, settings, fmt, tier, use_ac)
            except Exception as e:  # noqa: BLE001 - reported per key
                out[i] = e
                continue
            if hit is not None:
                self.stats[src] += 1
                out[i] = Decoded(k, hit, fmt, src, rec.width, rec.height)
            else:
                todo.append((i, rec, ck))
        if todo:
            t0 = time.perf_counter()
            imgs = self._decode([r for _, r, _ in todo], settings)
            dt = (time.perf_counter() - t0) / len(todo)
            for (i, rec, ck), img in zip(todo, imgs):
                if isinstance(img, Exception):
                    out[i] = img
                    continue
                png = encode_image(img, "PNG")
                data = png if fmt == "PNG" else encode_image(img, fmt)
                self.stats["decoded"] += 1
                if self.cache is not None:
                    sha = hashlib.sha256(rec.data).hexdigest()
                    self.cache.put(decoded_key(rec.key, sha, settings, self._digest, "PNG"), png)
                    if fmt != "PNG":
                        self.cache.put(ck, data)
                if self.write_archive_cache and use_ac and tier is not None:
                    try:
                        self.archive.cache_put(rec.key, tier, png)
                    except (ArchiveError, OSError):
                        pass  # the cache is an optimisation; never fail a decode for it
                out[i] = Decoded(rec.key, data, fmt, "decoded", img.width, img.height, dt)
        return out  # type: ignore[return-value]

    def _prefix_bpp(self, settings: DecodeSettings) -> float | None:
        """The tier's prefix budget, when this codec's streams decode from a prefix."""
        bpp = settings.extra.get("bpp")
        return float(bpp) if bpp is not None and getattr(self.codec, "progressive", False) else None

    def prefix_record(self, key: str, bpp: float) -> Record:
        """The record with only the first bytes of its stream, within ``bpp`` bits per pixel:
        two range reads (the plan, then the prefix); the rest of the record is never read."""
        info = self.archive.info(key)
        if info.status != "ok":
            raise FailedRecordError(f"{self.archive.url}: {key}: image failed when archived: "
                                    f"{info.error}")
        head = self.archive.read_prefix(key, self.codec.plan_read_bytes)
        try:
            n = self.codec.prefix_length(head, bpp=bpp)
        except (BitstreamError, CodecError) as e:
            raise DecodeError(f"{self.archive.url}: {key}: {e}") from e
        data = head[:n] if n <= len(head) else self.archive.read_prefix(key, n)
        return Record(key=key, data=data, height=info.height, width=info.width)

    def _decode(self, recs: Sequence[Record], s: DecodeSettings) -> list[Image.Image | Exception]:
        batch = getattr(self.codec, "decompress_batch", None)
        if batch is not None and len(recs) > 1:
            try:
                return list(batch([r.data for r in recs], steps=s.steps, gamma=s.gamma,
                                  seeds=s.seed))
            except (CodecError, RuntimeError, ValueError):
                pass  # retried below, one stream at a time
        out: list[Image.Image | Exception] = []
        for r in recs:  # isolate the bad stream
            try:
                out.append(self.codec.decompress(r.data, steps=s.steps, gamma=s.gamma, seed=s.seed))
            except (BitstreamError, CodecError) as e:
                out.append(DecodeError(f"{self.archive.url}: {r.key}: {e}"))
            except (RuntimeError, ValueError) as e:
                out.append(DecodeError(f"{self.archive.url}: {r.key}: decoding failed ({e})"))
        return out

    def get(self, key: str, tier: str, *, fmt: str = "PNG", steps: int | None = None,
            gamma: float | None = None, seed: int | None = None) -> Decoded:
        """One image at ``tier`` (raises the key's error)."""
        settings, overridden = self.settings(tier, steps=steps, gamma=gamma, seed=seed)
        res = self.decode_many([key], settings, fmt=fmt, tier=tier, overridden=overridden)[0]
        if isinstance(res, Exception):
            raise res
        return res


def _transcode(png: bytes, fmt: str) -> bytes:
    import io

    with Image.open(io.BytesIO(png)) as im:
        im.load()
        return encode_image(im, fmt)


def output_name(key: str, fmt: str) -> str:
    """Where ``export`` writes ``key``: its path with the extension replaced."""
    ext = {"PNG": ".png", "WEBP": ".webp", "JPEG": ".jpg"}[fmt]
    root, old = posixpath.splitext(key)
    return (root if old else key) + ext
