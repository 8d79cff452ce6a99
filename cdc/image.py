"""Image ↔ tensor conversion: any PIL mode or numpy array to 8-bit RGB, with a note.

The codec codes 8-bit sRGB. Other inputs are converted in a documented way and the
conversion is recorded in the stream (``SourceMode``) so ``cdc info`` can say what
happened to the original; an embedded colour profile is applied first (:mod:`cdc.colour`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from cdc.bitstream import MAX_SIDE, SourceMode
from cdc.colour import CONVERTED_INFO, to_srgb
from cdc.errors import ImageError

#: ``Image.info`` key a reader sets to the file's bits per sample when Pillow already reduced
#: them on load (16-bit RGB PNG/TIFF load as 8-bit "RGB"; see :func:`high_bit_depth`).
SOURCE_BITS_INFO = "cdc_source_bits"
#: ``Image.info`` key a reader sets to the frame count of an animated or multi-frame file it
#: reduced to its first frame; encoders then set the stream's first-frame flag.
FRAMES_INFO = "cdc_frames"


def first_frame_only(image: object) -> bool:
    """Whether ``image`` is the first frame of a multi-frame input (see :data:`FRAMES_INFO`)."""
    info = getattr(image, "info", None)
    return isinstance(info, dict) and int(info.get(FRAMES_INFO, 1) or 1) > 1


def _from_array(arr: np.ndarray) -> tuple[np.ndarray, SourceMode]:
    mode = SourceMode.RGB
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 + 32767) // 65535
        arr, mode = arr.astype(np.uint8), SourceMode.REDUCED_16BIT
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise ImageError(f"unsupported array dtype {arr.dtype}: pass uint8 or uint16 samples")
    if arr.ndim == 2:
        return (np.repeat(arr[:, :, None], 3, axis=2),
                mode if mode != SourceMode.RGB else SourceMode.GRAY)
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageError(
            f"unsupported array shape {arr.shape}: expected (H, W), (H, W, 3) or (H, W, 4)"
        )
    c = arr.shape[2]
    if c in (2, 4):
        arr = arr[:, :, : c - 1]
        mode = SourceMode.ALPHA_DROPPED
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
        mode = mode if mode != SourceMode.RGB else SourceMode.GRAY
    return np.ascontiguousarray(arr), mode


def high_bit_depth(img: Image.Image) -> bool:
    """Whether an image in an 8-bit mode came from more bits per sample.

    Pillow opens a 16-bit RGB(A) PNG or TIFF as mode "RGB"/"RGBA" and keeps only the high
    byte of each sample; the file's raw mode (``RGB;16B``...) is visible until ``load()``.
    A reader that loads the image first records it in ``info[SOURCE_BITS_INFO]``.
    """
    if int(img.info.get(SOURCE_BITS_INFO, 8) or 8) > 8:
        return True
    if int(img.info.get("bit_depth", 8) or 8) > 8:  # pillow-heif: a 10/12-bit HEIC read as 8
        return True
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and ";16" in raw:
            return True
    return False


def _from_pil(img: Image.Image) -> tuple[np.ndarray, SourceMode]:
    reduced = high_bit_depth(img)  # before asarray() or a profile: both drop the raw mode
    img, _ = to_srgb(img)  # a no-op on what pipeline.files.decode_image already converted
    m = img.mode
    if m == "RGB":
        mode = SourceMode.REDUCED_16BIT if reduced else SourceMode.RGB
        if img.info.get(CONVERTED_INFO) == "CMYK":
            mode = SourceMode.CONVERTED
        elif img.info.get(CONVERTED_INFO) == "P":
            mode = SourceMode.PALETTE
        return np.asarray(img, dtype=np.uint8), mode
    if m in ("L", "1"):
        return np.asarray(img.convert("RGB")), SourceMode.GRAY
    if m == "P":
        has_alpha = "transparency" in img.info
        rgb = img.convert("RGBA" if has_alpha else "RGB").convert("RGB")
        return np.asarray(rgb), SourceMode.ALPHA_DROPPED if has_alpha else SourceMode.PALETTE
    if m in ("RGBA", "LA", "PA", "RGBa", "La"):  # (a profile-converted RGBA palette too)
        return np.asarray(img.convert("RGBA").convert("RGB")), SourceMode.ALPHA_DROPPED
    if m.startswith("I;16") or m in ("I", "F"):
        arr = np.asarray(img)
        if m == "F":
            raise ImageError(
                "floating-point images (mode F) are not supported: convert to 8 or 16 bit"
            )
        if m == "I":  # 32-bit signed: Pillow uses it for 16-bit PNGs too
            if arr.min() < 0 or arr.max() > 65535:
                raise ImageError(
                    "32-bit integer image with values outside 0..65535 is not supported"
                )
            arr = arr.astype(np.uint16)
        rgb, _ = _from_array(arr.astype(np.uint16))
        return rgb, SourceMode.REDUCED_16BIT
    if m in ("CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB")), SourceMode.CONVERTED
    raise ImageError(f"unsupported image mode {m!r}")


def to_rgb_array(image: Image.Image | np.ndarray) -> tuple[np.ndarray, SourceMode]:
    """Any supported image → (H, W, 3) uint8 array and how it was converted."""
    if isinstance(image, Image.Image):
        arr, mode = _from_pil(image)
    elif isinstance(image, np.ndarray):
        arr, mode = _from_array(image)
    else:
        raise ImageError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    h, w = arr.shape[:2]
    if h < 1 or w < 1:
        raise ImageError(f"empty image ({w}×{h})")
    if h >= MAX_SIDE or w >= MAX_SIDE:
        raise ImageError(f"image {w}×{h} too large: sides must be < {MAX_SIDE}; tile it first")
    return arr, mode


def array_to_tensor(arr: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) float32 in [-1, 1]."""
    return (torch.from_numpy(np.array(arr, copy=True))
            .permute(2, 0, 1)[None].float().div(127.5).sub(1.0))


def tensor_to_image(x: Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] → 8-bit RGB PIL image (round half up, clipped)."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, bool]:
    """Pad bottom/right to a multiple; reflect where possible (fewer edge artefacts).

    Returns the padded tensor and whether replicate padding had to be used
    (reflect needs the pad to be smaller than the side).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, False
    replicate = ph >= h or pw >= w
    return F.pad(x, (0, pw, 0, ph), mode="replicate" if replicate else "reflect"), replicate
