"""Quality tiers: named decode settings (DDIM steps, start-noise scale γ, seed).

A tier is what a reader asks for ("preview", "standard", "high"), not a step count, so
the archive can change what a tier costs without changing its clients. Tiers live in the
archive's attributes (``Archive.tiers``, written at create time and updatable with
``Archive.set_tiers``); :data:`DEFAULT_TIERS` is what a new archive gets. A request may
override a tier's fields (``steps``/``gamma``/``seed``); the result is an explicit
:class:`cdc.interface.DecodeSettings`, which is what caches are keyed by.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdc.interface import DecodeSettings

#: Stored in every new archive; override per archive (``cdc archive --tier``) or per
#: request (``--steps/--gamma/--seed``, ``?steps=&gamma=&seed=``).
DEFAULT_TIERS: dict[str, dict[str, Any]] = {
    # 2 deterministic DDIM steps (gamma 0): the cheapest useful rebuild, for thumbnails and
    # browsing. (1 step works too; 2 costs little more and is visibly sharper.)
    "preview": {"steps": 2, "gamma": 0.0, "seed": 0},
    # A few deterministic steps: the model's operating point for fidelity (PSNR).
    "standard": {"steps": 4, "gamma": 0.0, "seed": 0},
    # Many steps from gamma-scaled noise with a fixed seed: perceptual quality (texture),
    # reproducible because the seed is part of the tier.
    "high": {"steps": 16, "gamma": 0.8, "seed": 0},
}
DEFAULT_TIER = "standard"

MAX_STEPS = 1000  # the models' training timesteps; the sampler refuses more
MAX_GAMMA = 2.0
FIELDS = ("steps", "gamma", "seed", "bpp")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # storage's rule for tier ids


class TierError(ValueError):
    """A tier name that is not defined, or settings out of range; names the tier."""


@dataclass(frozen=True)
class Tier:
    name: str
    steps: int
    gamma: float
    seed: int = 0
    #: Progressive codecs (DiffC) only: read at most this many bits per pixel of each
    #: record (a range read of the stream's prefix); other codecs read the whole record.
    bpp: float | None = None

    def settings(self) -> DecodeSettings:
        extra = {} if self.bpp is None else {"bpp": self.bpp}
        return DecodeSettings(steps=self.steps, gamma=self.gamma, seed=self.seed, extra=extra)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"steps": self.steps, "gamma": self.gamma, "seed": self.seed}
        if self.bpp is not None:
            d["bpp"] = self.bpp
        return d


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TierError(f"bad tier name {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . -")
    return name


def check_tier(name: str, fields: Mapping[str, Any]) -> Tier:
    """Validate one tier's fields (all of steps, gamma; seed optional) into a :class:`Tier`."""
    _check_name(name)
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TierError(
            f"tier {name!r}: unknown field(s) {sorted(unknown)}; use {', '.join(FIELDS)}"
        )
    try:
        steps = fields["steps"]
        gamma = fields["gamma"]
    except KeyError as e:
        raise TierError(f"tier {name!r}: missing {e.args[0]!r}") from None
    seed = fields.get("seed", 0)
    # steps = 0: the stream's base layer alone (codecs that carry one: refine's preview);
    # other codecs refuse it when decoding.
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= MAX_STEPS:
        raise TierError(f"tier {name!r}: steps must be an int in 0..{MAX_STEPS}, got {steps!r}")
    if (isinstance(gamma, bool) or not isinstance(gamma, (int, float))
            or not 0 <= gamma <= MAX_GAMMA):
        raise TierError(f"tier {name!r}: gamma must be a number in 0..{MAX_GAMMA}, got {gamma!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise TierError(f"tier {name!r}: seed must be a non-negative int, got {seed!r}")
    bpp = fields.get("bpp")
    if bpp is not None and (isinstance(bpp, bool) or not isinstance(bpp, (int, float))
                            or not 0 < bpp <= 64):
        raise TierError(f"tier {name!r}: bpp must be a number in (0, 64], got {bpp!r}")
    return Tier(name, int(steps), float(gamma), int(seed), None if bpp is None else float(bpp))


def check_tiers(tiers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate a whole tier table; returns it normalised (what goes into the archive)."""
    return {name: check_tier(name, fields).as_dict() for name, fields in tiers.items()}


def _number(text: str, what: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise TierError(f"{what}: {text!r} is not a number") from None


def parse_tier_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"high:steps=24,gamma=0.7,seed=3"`` -> ``("high", {...})`` (fields may be partial;
    missing ones come from the tier being overridden, see :func:`merge_tiers`)."""
    name, sep, rest = spec.partition(":")
    name = name.strip()
    _check_name(name)
    fields: dict[str, Any] = {}
    if sep and rest.strip():
        for part in rest.split(","):
            k, eq, v = part.partition("=")
            k = k.strip()
            if not eq or k not in FIELDS:
                raise TierError(f"tier spec {spec!r}: expected NAME:steps=N,gamma=G,seed=S[,bpp=B]")
            fields[k] = _number(v.strip(), f"tier spec {spec!r}")
    return name, fields


def merge_tiers(
    base: Mapping[str, Mapping[str, Any]], specs: list[str]
) -> dict[str, dict[str, Any]]:
    """Apply ``--tier`` specs on top of a tier table; a new tier needs steps and gamma."""
    out = {k: dict(v) for k, v in base.items()}
    for spec in specs:
        name, fields = parse_tier_spec(spec)
        merged = {**out.get(name, {}), **fields}
        out[name] = check_tier(name, merged).as_dict()
    return out


def resolve(
    tiers: Mapping[str, Mapping[str, Any]],
    name: str,
    *,
    steps: int | None = None,
    gamma: float | None = None,
    seed: int | None = None,
    bpp: float | None = None,
) -> tuple[DecodeSettings, bool]:
    """The decode settings of tier ``name`` with per-request overrides applied (``bpp``: a
    progressive codec's prefix budget, bits per pixel of the original).

    Returns ``(settings, overridden)``; ``overridden`` is False when the request uses the
    tier exactly as stored (only then may the archive's per-tier cache be used).
    Raises :class:`TierError` naming the known tiers for an unknown ``name``.
    """
    if name not in tiers:
        raise TierError(f"unknown tier {name!r} (tiers: {', '.join(sorted(tiers)) or 'none'})")
    base = check_tier(name, tiers[name])
    fields = base.as_dict()
    over = {k: v for k, v in (("steps", steps), ("gamma", gamma), ("seed", seed), ("bpp", bpp))
            if v is not None}
    fields.update(over)
    t = check_tier(name, fields)
    return t.settings(), t != base


def settings_dict(s: DecodeSettings) -> dict[str, Any]:
    """Explicit, JSON-able form of decode settings (for cache keys and reports)."""
    return {"steps": s.steps, "gamma": None if s.gamma is None else float(s.gamma), "seed": s.seed,
            **({"extra": dict(sorted(s.extra.items()))} if s.extra else {})}
