"""The ``cdc_archive`` attributes document: what the archive says about itself.

Codec, model and tiers live in the root group's attributes (see docs/storage.md). This
module reads them, checks a codec's weights digest against them and derives a new
document when tiers change; writing it back is :mod:`storage.group`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import CorruptArchiveError, ModelMismatchError, UnknownTierError
from .keys import TIER_ID as _TIER_ID
from .keys import check_tier_id


def checked_tiers(url: str, tiers: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``tiers`` as plain dicts, refusing bad tier ids and non-dict settings."""
    out: dict[str, dict[str, Any]] = {}
    for tid, settings in tiers.items():
        check_tier_id(tid, url)
        if not isinstance(settings, Mapping):
            raise TypeError(f"{url}: tier {tid!r} settings must be a dict, got {settings!r}")
        out[tid] = dict(settings)
    return out


def _digest_core(d: str) -> str:
    d = d.strip().lower()
    return d.split(":", 1)[1] if ":" in d else d


class ArchiveAttributes:
    """One archive's attributes document; ``doc`` is replaced whole, never edited."""

    def __init__(self, url: str, doc: dict[str, Any]) -> None:
        self.url = url
        self.doc = doc

    @classmethod
    def checked(cls, url: str, doc: dict[str, Any]) -> ArchiveAttributes:
        """The attributes of an archive being opened, their shape checked first: another
        writer may have put anything there, and every reader indexes into them.
        CorruptArchiveError names the first field that is not what this package writes."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise CorruptArchiveError(f"{url}: attribute {what} is malformed")

        codec, model = doc.get("codec"), doc.get("model")
        need(isinstance(codec, dict) and isinstance(codec.get("id"), str) and codec["id"] != ""
             and isinstance(codec.get("config", {}), dict), "'codec'")
        need(isinstance(model, dict) and isinstance(model.get("id"), str)
             and isinstance(model.get("weights_digest"), str), "'model'")
        tiers = doc.get("tiers", {})
        need(isinstance(tiers, dict) and all(isinstance(v, dict) for v in tiers.values())
             and all(isinstance(k, str) and _TIER_ID.fullmatch(k) for k in tiers), "'tiers'")
        need(isinstance(doc.get("created", {}), dict), "'created'")
        return cls(url, doc)

    def copy(self) -> dict[str, Any]:
        """A deep copy (callers may edit it freely)."""
        return json.loads(json.dumps(self.doc))

    @property
    def format_version(self) -> int:
        return int(self.doc["format_version"])

    @property
    def codec_id(self) -> str:
        return self.doc["codec"]["id"]

    @property
    def codec_config(self) -> dict[str, Any]:
        return dict(self.doc["codec"].get("config", {}))

    @property
    def model_id(self) -> str:
        return self.doc["model"]["id"]

    @property
    def weights_digest(self) -> str:
        return self.doc["model"]["weights_digest"]

    @property
    def tiers(self) -> dict[str, dict[str, Any]]:
        return json.loads(json.dumps(self.doc.get("tiers", {})))

    @property
    def created(self) -> dict[str, Any]:
        return dict(self.doc.get("created", {}))

    def check_model(self, digest: str) -> None:
        """Raise :class:`ModelMismatchError` unless ``digest`` is the archive's weights digest
        (ignoring case and an ``algo:`` prefix present on one side only)."""
        if _digest_core(digest) != _digest_core(self.weights_digest):
            raise ModelMismatchError(
                f"{self.url}: written with model {self.model_id!r} weights digest "
                f"{self.weights_digest!r}, but the codec in hand has {digest!r}; decoding "
                "with other weights gives wrong images"
            )

    def tier_settings(self, tier: str) -> dict[str, Any]:
        """The stored settings of ``tier`` (the decoded-image cache is keyed by them)."""
        check_tier_id(tier, self.url)
        tiers = self.doc.get("tiers", {})
        if tier not in tiers:
            raise UnknownTierError(f"{self.url}: no quality tier {tier!r} (tiers: {sorted(tiers)})")
        return tiers[tier]

    def with_tiers(
        self, tiers: Mapping[str, Mapping[str, Any]], *, replace: bool = False
    ) -> dict[str, Any]:
        """A new document with ``tiers`` added/updated (or replacing all tiers)."""
        new = {} if replace else self.tiers
        new.update(checked_tiers(self.url, tiers))
        doc = self.copy()
        doc["tiers"] = new
        try:
            json.dumps(doc)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.url}: tiers must be JSON-serialisable ({e})") from e
        return doc
