"""Tier policy: which tiers a new archive gets, and how a codec is set up for them.

The tier *tables* (defaults, validation, resolving a request) are in
:mod:`pipeline.archive.tier_settings`; this module decides per codec: a model's own
recommended tiers win over the defaults, a progressive codec's ``preview`` reads only a
prefix, and a codec whose streams depend on their decode path (CorrDiff) encodes for the
archive's tiers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.archive.codec_adapter import full_codec
from pipeline.archive.tier_settings import DEFAULT_TIER, DEFAULT_TIERS, TierError

#: A progressive codec's ``preview`` tier reads only this many bits per pixel of a record.
PROGRESSIVE_PREVIEW_BPP = 0.5


def base_tiers(codec: Any) -> dict[str, dict[str, Any]]:
    """The tiers the model's weights recommend (measured for that model), else the defaults."""
    rec = full_codec(codec).recommended_tiers()
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
    if tiers:
        paths = tier_paths(tiers)
        codec = full_codec(codec)
        if list(codec.decode_paths()) != paths:
            codec.prepare_paths(paths)


def check_codec_tiers(codec: Any, tiers: Mapping[str, Mapping[str, Any]]) -> None:
    """TierError for a tier the codec cannot decode: steps 0 (the base layer alone) on a
    codec whose streams carry none."""
    low = getattr(full_codec(codec), "min_steps", 1)
    for name, t in tiers.items():
        if int(t.get("steps", low)) < low:
            raise TierError(f"tier {name!r}: steps {t['steps']} decodes a base layer alone; "
                            f"{full_codec(codec).codec_id} streams have none (steps >= {low})")


def tiers_for(codec: Any, tiers: Mapping[str, Mapping[str, Any]] | None = None
              ) -> dict[str, dict[str, Any]]:
    """The tier table a new archive gets: ``tiers``, else :func:`base_tiers`; for a
    progressive codec (DiffC) ``preview`` also gets a prefix budget, so previews
    range-read the first bytes of each record only."""
    out = {k: dict(v) for k, v in (tiers or base_tiers(codec)).items()}
    if full_codec(codec).progressive and "preview" in out:
        out["preview"].setdefault("bpp", PROGRESSIVE_PREVIEW_BPP)
    return out
