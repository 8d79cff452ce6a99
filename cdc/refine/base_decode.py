"""The base layer's AVIF → RGB pixels, checked, without torch (both decoders use it)."""

from __future__ import annotations

import io
import warnings

import numpy as np

# AvifImagePlugin registers AVIF, so Image.open(formats=["AVIF"]) skips Image.init(), which
# imports every Pillow plugin (≈ 40 ms of a cold preview decode).
from PIL import AvifImagePlugin, Image  # noqa: F401

from cdc.errors import CorruptStreamError
from cdc.refine import bare_avif
from cdc.refine.downscale import scaled_size

__all__ = ["decode_rgb", "scaled_size"]


def decode_rgb(data: bytes, height: int, width: int, scale: int, bare: bool = False
               ) -> np.ndarray:
    """AVIF bytes (``bare``: av1C[1:4] + AV1 payload) → (h, w, 3) uint8 at the base's own
    size (the image size divided by the factor of the downscale code ``scale``, rounded up).

    The AVIF must claim exactly that size (checked before decoding)."""
    want_h, want_w = scaled_size(height, width, scale)
    if bare:
        data = bare_avif.rebuild(data, want_w, want_h)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=["AVIF"])
            if img.size != (want_w, want_h):
                raise CorruptStreamError(
                    f"base layer claims {img.size[0]}×{img.size[1]}, the header implies "
                    f"{want_w}×{want_h}")
            img.load()
            return np.asarray(img.convert("RGB"))
    except CorruptStreamError:
        raise
    except Exception as e:  # noqa: BLE001 - a native decoder's refusal is a corrupt stream
        raise CorruptStreamError(f"base layer is not a decodable AVIF ({e})") from e
