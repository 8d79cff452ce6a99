"""Encoding a shard: read + validate images, encode them in size batches, commit.

:func:`encode_shard` runs one shard (what ``cdc archive`` runs on every encoder, with or
without Ray): read + validate images in windows (a thread pool prefetches the next window
while the current one encodes), group them by padded size so ``compress_batch`` stacks
equal shapes into one forward pass, encode, make one :class:`storage.Record` per image (a
*failed* record, with the error, for an image that cannot be read or encoded), and commit
the shard in one piece with ``Archive.write_shard``. It yields progress events as it works.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from cdc import CodecError
from cdc.interface import RateControlled
from pipeline.archive.batching import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_PIXELS, group_batches
from pipeline.archive.codec_adapter import full_codec
from pipeline.archive.codec_tiers import match_tiers
from pipeline.archive.handoff import HeldLock
from pipeline.archive.input_loading import DEFAULT_READ_RETRIES, Loaded, load_item
from pipeline.archive.planning import InputItem, ShardPlan
from pipeline.archive.rate import cap_stream
from pipeline.files import DEFAULT_MAX_PIXELS
from pipeline.photo_metadata import FILE_FIELDS, Policy, apply_policy, digest_of
from storage import Archive, Record
from storage.records import meta_json


def encode_images(codec: Any, images: Sequence[Image.Image],
                  batch_size: int = DEFAULT_BATCH_SIZE,
                  max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
                  max_bpp: float | None = None, rate: float | None = None,
                  psnr: float | None = None) -> list[bytes | str]:
    """Encode images in size-grouped batches; an item is its bitstream or an error string.

    A batch that fails (one unencodable image, out of memory) is retried image by image so
    one bad image costs only itself. ``max_bpp`` (progressive codecs only) keeps the longest
    decodable prefix of each stream within that rate (:func:`pipeline.archive.rate.cap_stream`);
    ``rate`` (rate-controlled codecs only) is the target their encoder meets per image;
    ``psnr`` (the same) a fidelity target instead, each image the fewest bytes whose base
    layer reaches it, ``rate`` then a cap.
    """
    codec = full_codec(codec)
    if rate is not None or psnr is not None:
        if not isinstance(codec, RateControlled):
            what = "a target rate" if psnr is None else "a PSNR target"
            raise ValueError(f"{codec.model_id}: {what} needs a rate-controlled codec")
        if psnr is None:
            codec.with_rate(rate)
        else:
            codec.with_rate(rate, psnr=psnr)
    if max_bpp is not None and not codec.progressive:
        raise ValueError(f"{codec.model_id}: max_bpp needs a progressive codec (DiffC)")
    out: list[bytes | str] = [""] * len(images)
    sizes = [(im.height, im.width) for im in images]
    for batch in group_batches(sizes, codec.pad_multiple, batch_size, max_batch_pixels):
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


def make_record(loaded: Loaded, result: bytes | str | None, metadata: Policy = "keep"
                ) -> Record:
    """The record of one input: its stream, or the error; with the capture metadata that
    ``metadata`` keeps (a failed record keeps it too: the photo is still the user's)."""
    meta = apply_policy(loaded.meta, metadata)
    if loaded.error:
        return Record.failed(loaded.key, loaded.error, height=loaded.height, width=loaded.width)
    if isinstance(result, bytes) and result:
        return Record(key=loaded.key, data=result, height=loaded.height, width=loaded.width,
                      meta=meta)
    return Record.failed(loaded.key, str(result or "encoding failed"), height=loaded.height,
                         width=loaded.width, meta=meta)


@dataclass
class EncodeOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS
    read_retries: int = DEFAULT_READ_RETRIES
    read_threads: int = 4
    window: int = 0  # images read ahead per step; 0: 4 x batch_size
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bpp: float | None = None  # progressive codecs: keep the prefix within this rate
    rate: float | None = None  # rate-controlled codecs: the encoder's target bpp
    psnr: float | None = None  # rate-controlled codecs: a fidelity target (dB), rate a cap
    metadata: Policy = "keep"  # capture metadata kept: keep, no-gps, none


def _windows(items: Sequence[InputItem], size: int) -> list[Sequence[InputItem]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def encode_shard(codec: Any, archive: Archive, plan: ShardPlan, *, owner: str | None = None,
                 options: EncodeOptions | None = None,
                 before_commit: Callable[[], None] | None = None,
                 compute_lock: threading.Lock | None = None) -> Iterator[dict[str, Any]]:
    """Encode and commit one shard; yields ``{"type": "progress", ...}`` events after each
    window and finally ``{"type": "shard", ...}`` with the shard's totals, failures and
    notes (``[{"key", "note"}]``: what reading changed about an input).

    Records are written in key order whatever the batching, so a re-run of the same plan
    produces the same key list (``Archive.write_shard`` then accepts it as a no-op).
    ``compute_lock`` is held while reading and encoding and released for the commit, so a
    worker running two shards in two threads overlaps one's commit (I/O, e.g. an upload
    to S3) with the next one's encoding, without running two encodes at once.
    """
    match_tiers(codec, archive.tiers)
    held = HeldLock()
    try:
        yield from _encode_shard(codec, archive, plan, owner, options, before_commit,
                                 compute_lock, held)
    finally:
        held.release()


def _encode_shard(codec: Any, archive: Archive, plan: ShardPlan, owner: str | None,
                  options: EncodeOptions | None, before_commit: Callable[[], None] | None,
                  compute_lock: threading.Lock | None, held: HeldLock) -> Iterator[dict[str, Any]]:
    opt = options or EncodeOptions()
    window = opt.window or max(1, 4 * opt.batch_size)
    pid = os.getpid()
    records: list[Record] = []
    failures: list[dict[str, str]] = []
    notes: list[dict[str, str]] = []  # what reading changed, per key (profile, frames)
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
                                    opt.max_batch_pixels, opt.max_bpp, opt.rate, opt.psnr)
                for i, r in zip(good, enc):
                    results[i] = r
            step = {"images": 0, "ok": 0, "failed": 0, "bytes_in": 0, "bytes_out": 0,
                    "pixels": 0}
            for ld, r in zip(loaded, results):
                if ld.note:
                    notes.append({"key": ld.key, "note": ld.note})
                rec = make_record(ld, r, opt.metadata)
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
    captured = [r for r in records if set(r.meta) - set(FILE_FIELDS)]  # more than file facts
    yield {"type": "shard", "shard": plan.shard, "pid": pid, **totals,
           "metadata": {"images": len(captured),
                        "bytes": sum(len(meta_json(r.meta).encode()) for r in records)},
           "digests": {r.key: d for r in records if r.ok and (d := digest_of(r.meta))},
           "failures": failures, "notes": notes, "seconds": time.perf_counter() - t0,
           "committed_at": manifest.get("committed_at"), "owner": manifest.get("owner")}
