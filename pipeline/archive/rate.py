"""Rate targets (``cdc archive --rate BPP``): how a bits-per-pixel target becomes a model
choice or a stream length.

Two mechanisms, one per kind of codec:

* **Progressive codecs (DiffC)**: every prefix of a stream decodes, so a record keeps only
  the longest prefix within the target (:func:`cap_stream`): a true per-image rate cap.
* **CDC and CorrDiff**: the rate is fixed when the model is trained (one model per λ, as in
  CompressAI's zoo, where ``quality=`` picks one of several trained models). ``--rate``
  picks, among the shipped models of the same codec and *family* (``family`` in
  ``zoo/models.json``: a rate ladder, models that differ only in λ; models without one form
  one family per codec), the one whose *measured* rate (``rate``: mean bpp on a named image set)
  is nearest the target, and refuses when none is within :data:`TOLERANCE`, naming the
  rates there are. So ``--rate`` with a latent ladder model never falls back to the
  pixel-space cdc-small, and ``-m cdc-small --rate`` stays with cdc-small.
"""

from __future__ import annotations

import math
from typing import Any

from cdc.registry import codec_of

#: How far (as a ratio) the nearest model's measured rate may be from the target.
TOLERANCE = 1.5


class RateError(ValueError):
    """A rate target that cannot be met; the message lists what is available."""


def check_rate(rate: float) -> None:
    if not rate > 0:
        raise RateError(f"--rate must be a positive number of bits per pixel, got {rate}")


def check_psnr(codec: Any, psnr: float, rate: float | None = None) -> None:
    """A fidelity target (``--psnr``, ``--rate`` then a cap) a codec can aim at, else
    :class:`RateError`: only a rate-controlled encoder searches per image; any other codec's
    rate is its model's. The codec's own range check (``with_rate``) says the rest."""
    from cdc.interface import RateControlled

    if not isinstance(codec, RateControlled):
        raise RateError(f"--psnr {psnr:g}: the {codec.codec_id} model {codec.model_id} cannot "
                        "aim at a PSNR (a refine model can; --rate picks a rate)")
    if rate is not None:
        check_rate(rate)
    try:
        codec.with_rate(rate, psnr=psnr)
    except ValueError as e:
        raise RateError(f"--psnr {psnr:g}: {e}") from None


def measured_rates(codec_id: str, registry: dict[str, dict[str, Any]],
                   family: str | None = None) -> dict[str, float]:
    """Shipped models of ``codec_id`` and ``family`` (None: those without one) that record
    a measured rate: name → bpp."""
    return {name: float(e["rate"]["bpp"]) for name, e in registry.items()
            if codec_of(e) == codec_id and isinstance(e.get("rate"), dict)
            and e["rate"].get("bpp") and family_of(e) == family}


def family_of(entry: dict[str, Any]) -> str | None:
    """A shipped model's rate family (``family`` in its registry entry), or None."""
    return entry.get("family") or None


def choose_model(model: str, rate: float, registry: dict[str, dict[str, Any]]) -> str:
    """The shipped model of ``model``'s codec whose measured rate is nearest ``rate``.

    ``model`` must be a shipped name (its codec id says which family to choose from); a
    weights path or URL has exactly one rate, so a target cannot change it.
    """
    check_rate(rate)
    entry = registry.get(model)
    if entry is None:
        raise RateError(f"--rate {rate:g}: {model} is not a shipped model, so there is nothing "
                        "to choose from; its rate is fixed by its training (leave out --rate)")
    codec_id = codec_of(entry)
    family = family_of(entry)
    rates = measured_rates(codec_id, registry, family)
    where = f" in the {family} family" if family else ""
    if not rates:
        raise RateError(f"--rate {rate:g}: no shipped {codec_id} model{where} records a "
                        "measured rate")
    best = min(rates, key=lambda n: abs(math.log(rates[n] / rate)))
    if max(rates[best] / rate, rate / rates[best]) > TOLERANCE:
        have = ", ".join(f"{n} {b:.3g} bpp" for n, b in sorted(rates.items(), key=lambda kv: kv[1]))
        raise RateError(f"--rate {rate:g}: no shipped {codec_id} model is within ×{TOLERANCE:g} "
                        f"of that{where} (measured: {have})")
    return best


def cap_stream(codec: Any, data: bytes, rate: float) -> bytes:
    """A progressive codec's stream cut to the longest decodable prefix within ``rate``
    bits per pixel (at least its header and plan)."""
    return data[: codec.prefix_length(data, bpp=rate)]


__all__ = ["RateError", "TOLERANCE", "cap_stream", "check_rate", "choose_model", "family_of",
           "measured_rates"]
