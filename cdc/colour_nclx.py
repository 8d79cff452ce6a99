"""HEIF ``nclx`` colour (code points instead of an ICC profile) → sRGB, before coding.

Why: a HEIC photo describes its colour either with an ICC profile (iPhones: Display P3,
handled by :mod:`cdc.colour`) or with ``nclx`` code points (ISO/IEC 23091-2: primaries,
transfer, matrix), which pillow-heif reports in ``info["nclx_profile"]`` with the primaries'
chromaticities. Decodes carry no colour description, so a viewer shows them as sRGB: a
Display P3 or BT.2020 photo would come back with its colours moved. For the standard-range
transfers (sRGB, BT.709/601/2020) the primaries are converted in linear light (a 3×3 matrix,
Bradford adaptation where the white points differ) with the transfer curve kept, the way a
colour-managed viewer shows such a file; colours outside sRGB are clipped. sRGB/BT.709
primaries change nothing. HDR transfers (PQ, HLG) are coded as stored, with a note: they
need tone mapping, not a matrix. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

NCLX_INFO = "nclx_profile"
_SRGB = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
_D65 = (0.3127, 0.3290)
_TOLERANCE = 2e-3  # chromaticities are stored as floats; sRGB's read back within 1e-7
#: Transfer code points of standard dynamic range (sRGB, BT.709, BT.601, BT.2020 10/12 bit).
SDR_TRANSFERS = {1, 6, 13, 14, 15}
HDR_TRANSFERS = {16: "PQ", 18: "HLG"}
PRIMARIES = {1: "BT.709/sRGB", 4: "BT.470M", 5: "BT.601 625", 6: "BT.601 525", 9: "BT.2020",
             11: "DCI-P3", 12: "Display P3", 22: "EBU 3213"}
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614],
                      [-0.7502, 1.7135, 0.0367],
                      [0.0389, -0.0685, 1.0296]])


def _xyz(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_xyz(primaries: tuple[tuple[float, float], ...], white: tuple[float, float]
               ) -> np.ndarray:
    """The linear RGB → XYZ matrix of a colour space given by its chromaticities."""
    p = np.stack([_xyz(c) for c in primaries], axis=1)
    return p * np.linalg.solve(p, _xyz(white))


def _adapt(src_white: tuple[float, float], dst_white: tuple[float, float]) -> np.ndarray:
    ws, wd = _BRADFORD @ _xyz(src_white), _BRADFORD @ _xyz(dst_white)
    return np.linalg.inv(_BRADFORD) @ np.diag(wd / ws) @ _BRADFORD


def to_srgb_matrix(primaries: tuple[tuple[float, float], ...], white: tuple[float, float]
                   ) -> np.ndarray:
    """Linear RGB in the given space → linear sRGB."""
    return (np.linalg.inv(rgb_to_xyz(_SRGB, _D65)) @ _adapt(white, _D65)
            @ rgb_to_xyz(primaries, white))


def _decode_srgb(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _encode_srgb(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


def _chromaticities(nclx: Mapping[str, Any]) -> tuple[tuple[tuple[float, float], ...],
                                                     tuple[float, float]] | None:
    try:
        xy = [(float(nclx[f"color_primary_{c}_x"]), float(nclx[f"color_primary_{c}_y"]))
              for c in ("red", "green", "blue", "white")]
    except (KeyError, TypeError, ValueError):
        return None
    if not all(0 < x < 1 and 0 < y < 1 for x, y in xy):
        return None
    return tuple(xy[:3]), xy[3]


def nclx_to_srgb(img: Image.Image) -> tuple[Image.Image, str]:
    """``img`` with its ``nclx`` primaries converted to sRGB, and a note (``""``: nothing
    done). ``img`` is never changed; the result drops ``info["nclx_profile"]``."""
    nclx = img.info.get(NCLX_INFO)
    if not isinstance(nclx, Mapping) or img.mode not in ("RGB", "RGBA"):
        return img, ""
    got = _chromaticities(nclx)
    code = nclx.get("color_primaries")
    name = PRIMARIES.get(code, f"code {code}") if isinstance(code, int) else "unnamed"
    if got is None:
        return img, "nclx colour primaries unreadable: coded as stored"
    prim, white = got
    if all(abs(a - b) <= _TOLERANCE for p, q in zip((*prim, white), (*_SRGB, _D65))
           for a, b in zip(p, q)):
        return img, ""
    transfer = nclx.get("transfer_characteristics")
    if transfer in HDR_TRANSFERS:
        return img, (f"HDR colour ({HDR_TRANSFERS[transfer]} transfer, {name} primaries) "
                     "coded as stored: not tone-mapped")
    if transfer not in SDR_TRANSFERS:
        return img, f"nclx transfer {transfer} with {name} primaries: coded as stored"
    m = to_srgb_matrix(prim, white).astype(np.float32)
    arr = np.asarray(img)
    lin = _decode_srgb(arr[..., :3].astype(np.float32) / 255)
    rgb = np.clip(lin @ m.T, 0.0, 1.0)
    out8 = (_encode_srgb(rgb) * 255 + 0.5).astype(np.uint8)
    if img.mode == "RGBA":
        out8 = np.concatenate([out8, arr[..., 3:]], axis=-1)
    out = Image.fromarray(out8)
    out.info = {k: v for k, v in img.info.items() if k != NCLX_INFO}
    return out, (f"colour primaries {name} (HEIF nclx) converted to sRGB "
                 "(colours outside sRGB clipped)")
