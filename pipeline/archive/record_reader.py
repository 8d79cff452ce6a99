"""Reading back: records -> images at a quality tier, through the caches.

What ``cdc get``, ``cdc export`` and ``cdc serve`` run: :class:`Reader` looks a key up,
reads its record (one ranged read; for a progressive codec's prefix tier only the
prefix), and decodes it at a tier, through a local disk LRU and optionally the archive's
own cache area. Nothing is decoded early. A Python caller need not know which model
wrote an archive: ``Reader(archive)`` (or :func:`open_archive`) loads it, as ``cdc get`` does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from cdc import BitstreamError, CodecError
from cdc.interface import DecodeSettings
from pipeline.archive.codec_adapter import full_codec, weights_digest
from pipeline.archive.codec_tiers import check_codec_tiers
from pipeline.archive.decoded_lru import DiskLRU, decoded_key
from pipeline.archive.outputs import transcode
from pipeline.archive.tier_settings import TierError, resolve
from pipeline.files import encode_image
from storage import Archive, ArchiveError, Record


class FailedRecordError(ArchiveError):
    """The key exists but holds an image that failed at archive time (no bitstream)."""


class DecodeError(Exception):
    """A stored bitstream could not be decoded; names the key."""


def resolve_model(archive: Archive, model: str | None) -> str:
    """The model to decode ``archive`` with: ``model`` when given, else the archive's own:
    the shipped model of that id or digest, or a model in the local model cache
    (:mod:`zoo.cache`) with that digest. The caller's load checks the digest."""
    if model:
        return model
    from zoo import find_model, registry
    from zoo.cache import cache_dir

    digest = archive.weights_digest.lower().removeprefix("sha256:")
    entry = registry().get(archive.model_id)
    if entry is not None and (not digest or entry.get("sha256") == digest):
        return archive.model_id
    found = find_model(digest) if digest else None
    if found is not None:
        return found[0]
    raise ArchiveError(
        f"{archive.url}: written with model {archive.model_id!r} "
        f"({archive.weights_digest[:19]}…), which is not a shipped model (nor in the local "
        f"model cache, {cache_dir()}); pass --model with its weights path or URL "
        "(Python: model= or codec=)"
    )


def archive_codec(archive: Archive, model: str | None = None, *, device: str = "cpu",
                  precision: str | None = None) -> Any:
    """The codec that decodes ``archive``, loaded from the zoo: ``model`` when given, else
    the archive's own (:func:`resolve_model`, the lookup ``cdc get`` makes), so a caller
    need not know which model wrote it. :class:`Reader` checks the digest."""
    from zoo import load_codec

    return load_codec(resolve_model(archive, model), device=device, precision=precision)


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

    ``codec`` None: the archive's own model, loaded on CPU (:func:`archive_codec`); a codec
    given is checked against the archive (``ModelMismatchError`` if it is not its model).
    """

    archive: Archive
    codec: Any = None
    cache: DiskLRU | None = None
    archive_cache: bool = True
    write_archive_cache: bool = False
    stats: dict[str, int] = field(default_factory=lambda: {"cache": 0, "archive-cache": 0,
                                                             "decoded": 0})

    def __post_init__(self) -> None:
        if self.codec is None:
            self.codec = archive_codec(self.archive)
        self.codec = full_codec(self.codec)
        self.archive.check_model(weights_digest(self.codec))
        self._digest = self.codec.weights_sha256

    def settings(self, tier: str, *, steps: int | None = None, gamma: float | None = None,
                 seed: int | None = None, bpp: float | None = None
                 ) -> tuple[DecodeSettings, bool]:
        """(settings, overridden) of ``tier`` in this archive; TierError if unknown/bad.

        ``bpp`` decodes a progressive codec's stream from its longest prefix within that
        many bits per pixel (a TierError for codecs whose streams need every byte)."""
        if bpp is not None and not self.codec.progressive:
            raise TierError(f"bpp {bpp:g}: {self.codec.codec_id} streams do not decode from a "
                            "prefix (only progressive codecs such as DiffC do)")
        settings, overridden = resolve(self.archive.tiers, tier, steps=steps, gamma=gamma,
                                       seed=seed, bpp=bpp)
        check_codec_tiers(self.codec, {tier: {"steps": settings.steps}})
        return settings, overridden

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
                return transcode(hit, fmt), "cache", want
        if use_archive_cache and tier is not None:
            try:
                hit = self.archive.cache_get(rec.key, tier)
            except (ArchiveError, OSError):
                hit = None
            if hit is not None:
                if self.cache is not None:
                    self.cache.put(png, hit)
                return (hit if fmt == "PNG" else transcode(hit, fmt)), "archive-cache", want
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
        return float(bpp) if bpp is not None and self.codec.progressive else None

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
        if len(recs) > 1:
            try:
                return list(self.codec.decompress_batch([r.data for r in recs], steps=s.steps,
                                                        gamma=s.gamma, seeds=s.seed))
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
            gamma: float | None = None, seed: int | None = None,
            bpp: float | None = None) -> Decoded:
        """One image at ``tier`` (raises the key's error); ``bpp``: from a prefix."""
        settings, overridden = self.settings(tier, steps=steps, gamma=gamma, seed=seed, bpp=bpp)
        res = self.decode_many([key], settings, fmt=fmt, tier=tier, overridden=overridden)[0]
        if isinstance(res, Exception):
            raise res
        return res


def open_archive(url: str, codec: Any = None, *, model: str | None = None,
                 device: str = "cpu", read_only: bool = True,
                 storage_options: dict[str, Any] | None = None,
                 cache: DiskLRU | None = None) -> Reader:
    """A :class:`Reader` on the archive at ``url`` (path or fsspec URL) with the model that
    wrote it, found and loaded as ``cdc get`` does; ``codec`` or ``model`` (shipped name,
    path or URL) to decode with another copy of it (checked against the archive)."""
    archive = Archive.open(url, read_only=read_only, storage_options=storage_options)
    if codec is None:
        codec = archive_codec(archive, model, device=device)
    return Reader(archive, codec, cache=cache)
