"""What an evaluation compares: its *entries*, and the order they run in.

An entry is any object with ``name``, ``encode(img) -> bytes`` and ``decode(bytes) -> img``
(optionally ``family`` to group curves). Here: entries from two functions (a model at one
rate and decode setting), classical codecs at a fixed quality, and classical codecs that
hit, image by image, the bpp another entry reached. Kept apart from the runner
(:mod:`pipeline.evaluation.runner`) because building entries needs no metrics, torch or images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from pipeline.evaluation.classical import (
    CODECS,
    BppMatch,
    ClassicalCodec,
    CodecUnavailableError,
    encode_at_bpp,
    get_codec,
)

log = logging.getLogger(__name__)


@runtime_checkable
class Entry(Protocol):
    name: str

    def encode(self, img: Image.Image) -> bytes: ...

    def decode(self, data: bytes) -> Image.Image: ...



@dataclass
class CallableEntry:
    """An entry from two functions (e.g. a CDC codec at one rate and decode setting)."""

    name: str
    encode_fn: Callable[[Image.Image], bytes]
    decode_fn: Callable[[bytes], Image.Image]
    family: str | None = None

    def encode(self, img: Image.Image) -> bytes:
        return self.encode_fn(img)

    def decode(self, data: bytes) -> Image.Image:
        return self.decode_fn(data)


@dataclass
class ClassicalEntry:
    """A classical codec at one fixed quality."""

    codec: ClassicalCodec
    quality: int
    name: str = ""
    family: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.codec.name}-q{self.quality}"
        self.family = self.family or self.codec.label

    def encode(self, img: Image.Image) -> bytes:
        return self.codec.encode(img, self.quality)

    def decode(self, data: bytes) -> Image.Image:
        return self.codec.decode(data)

    def columns(self) -> dict[str, Any]:
        return {"quality": self.quality}


@dataclass
class MatchedBppEntry:
    """A classical codec at the quality that lands closest to the bpp that entry ``match``
    reached on the same image (the runner sets ``target_bpp`` before each encode)."""

    codec: ClassicalCodec
    match: str
    name: str = ""
    family: str = ""
    target_bpp: float | None = None
    last: BppMatch | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.codec.name}@{self.match}"
        self.family = self.family or self.codec.label

    def encode(self, img: Image.Image) -> bytes:
        if self.target_bpp is None:
            raise RuntimeError(f"{self.name}: no target bpp (is {self.match!r} evaluated first?)")
        self.last = encode_at_bpp(self.codec, img, self.target_bpp)
        return self.last.data

    def decode(self, data: bytes) -> Image.Image:
        return self.codec.decode(data)

    def columns(self) -> dict[str, Any]:
        return {"quality": self.last.quality if self.last else None, "target_bpp": self.target_bpp}


def _usable(codecs: Iterable[str] | None) -> list[ClassicalCodec]:
    out = []
    for name in codecs or CODECS:
        try:
            out.append(get_codec(name))
        except CodecUnavailableError as e:
            log.warning("skipping %s", e)
    return out


def classical_entries(qualities: dict[str, Sequence[int]]) -> list[ClassicalEntry]:
    """Fixed-quality sweeps, e.g. ``{"jpeg": [10, 30, 50], "webp": [20, 50]}``; codecs that
    cannot run here are skipped with a warning."""
    usable = {c.name: c for c in _usable(qualities)}
    return [ClassicalEntry(usable[n], q) for n, qs in qualities.items() if n in usable for q in qs]


def matched_bpp_entries(references: str | Sequence[str],
                        codecs: Iterable[str] | None = None) -> list[MatchedBppEntry]:
    """One entry per (reference entry, classical codec) matching the reference's bpp per image.

    Each codec family then gets one RD point per reference rate. Unavailable codecs are
    skipped with a warning (see :func:`pipeline.evaluation.classical.available_codecs`).
    """
    refs = [references] if isinstance(references, str) else list(references)
    return [MatchedBppEntry(c, r) for c in _usable(codecs) for r in refs]


def family_of(entry: Any) -> str:
    return getattr(entry, "family", None) or entry.name


def ordered_entries(entries: Sequence[Any]) -> list[Any]:
    """Entries in the given order, except that a bpp-matching entry comes after its reference."""
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"entry names must be unique: {names}")
    for e in entries:
        if not all(callable(getattr(e, m, None)) for m in ("encode", "decode")):
            raise TypeError(f"{e!r} is not an entry (needs name, encode(img), decode(bytes))")
        m = getattr(e, "match", None)
        if m is not None and m not in names:
            raise ValueError(f"{e.name}: matches unknown entry {m!r}")
    done: list[Any] = []
    pending = list(entries)
    while pending:  # stable: keep the given order, deferring each entry until its reference
        ready = [e for e in pending
                 if getattr(e, "match", None) in (None, *(d.name for d in done))]
        if not ready:
            raise ValueError(f"circular bpp matching among {[e.name for e in pending]}")
        done.append(ready[0])
        pending.remove(ready[0])
    return done
