"""Embedded colour profiles → sRGB, before coding.

Why: the codecs code the sample values and every decode is written without a profile, so a
viewer shows it as sRGB. A photo whose file carries another ICC profile (every iPhone photo
since 2016 is Display P3, many cameras write Adobe RGB, print files are CMYK) would come back
with its colours moved: Adobe RGB's greens and reds lose up to a third of their saturation.
Converting to sRGB first (littlecms through Pillow's ``ImageCms``, perceptual intent, which
for the usual matrix profiles is relative colorimetric) keeps every colour sRGB can show;
colours outside sRGB's gamut are clipped to its edge, which the note says.

A profile that maps to sRGB within one level (sRGB itself under its many names) changes
nothing. A profile that cannot be read, is larger than :data:`MAX_PROFILE_BYTES`, or does not
fit the image's mode is ignored, as viewers do, with a note. PIL only: no torch, no I/O.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from cdc.colour_nclx import nclx_to_srgb

#: ``Image.info`` key set to the source mode ("CMYK", "P") on an image that a profile turned
#: into RGB(A), so the stream can still say how the source was stored (``SourceMode``).
CONVERTED_INFO = "cdc_colour_converted"
#: Largest embedded profile read (CMYK press profiles run to a few MB; a file that claims
#: more is refused before littlecms parses it).
MAX_PROFILE_BYTES = 8 << 20
#: The profile colour space each image mode needs, and the mode the transform writes.
_MODES = {"RGB": ("RGB", "RGB"), "RGBA": ("RGB", "RGBA"), "CMYK": ("CMYK", "RGB")}
#: Grid of colours that decides whether a profile is sRGB in all but name.
_PROBE_LEVELS = np.linspace(0, 255, 16).round().astype(np.uint8)


def _describe(profile) -> str:
    desc = (getattr(profile.profile, "profile_description", "") or "").strip()
    desc = "".join(c for c in desc if c.isprintable())[:60]
    return repr(desc) if desc else "(unnamed)"


_CACHE: dict[tuple[str, str], object] = {}
_CACHE_SIZE = 32


def _transform(data: bytes, mode: str):
    """(transform, description, is_srgb) for one profile and image mode, or a reason string
    why it cannot be used. Cached by the profile's digest: a collection shares few profiles."""
    key = (hashlib.sha256(data).hexdigest(), mode)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _build(data, mode)
    return _CACHE[key]


def _build(data: bytes, mode: str):
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(data))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        return f"unreadable colour profile ignored ({e})"
    space = (getattr(profile.profile, "xcolor_space", "") or "").strip()
    need, out_mode = _MODES[mode]
    if space != need:
        return f"colour profile for {space or 'an unknown space'} ignored on a {mode} image"
    srgb = ImageCms.createProfile("sRGB")
    try:
        t = ImageCms.buildTransform(profile, srgb, mode, out_mode,
                                    renderingIntent=ImageCms.Intent.PERCEPTUAL)
        is_srgb = need == "RGB" and _maps_to_itself(
            ImageCms.buildTransform(profile, srgb, "RGB", "RGB",
                                    renderingIntent=ImageCms.Intent.PERCEPTUAL))
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        return f"colour profile {_describe(profile)} ignored: no transform to sRGB ({e})"
    return t, _describe(profile), is_srgb


def _maps_to_itself(rgb_transform) -> bool:
    """Whether an RGB → sRGB transform moves no colour of a 16³ grid by more than a level."""
    from PIL import ImageCms

    g = np.stack(np.meshgrid(_PROBE_LEVELS, _PROBE_LEVELS, _PROBE_LEVELS, indexing="ij"), -1)
    probe = Image.fromarray(np.ascontiguousarray(g.reshape(1, -1, 3)), "RGB")
    out = np.asarray(ImageCms.applyTransform(probe, rgb_transform), dtype=np.int16)
    return int(np.abs(out - np.asarray(probe, dtype=np.int16)).max()) <= 1


def to_srgb(img: Image.Image) -> tuple[Image.Image, str]:
    """``img`` in sRGB and a note of what was done (``""``: nothing to do).

    ``img`` itself is never changed. A converted result drops the ``icc_profile`` it applied
    (so a second call is a no-op) and keeps the rest of ``img.info``; a CMYK image comes back
    RGB with :data:`CONVERTED_INFO` set (a palette image RGB(A), likewise). Where nothing is
    converted ``img`` itself comes back, profile and all (a second call finds the same answer
    in the cache). Grayscale images keep their samples: gray profiles differ from sRGB's
    tone curve by a level or two. A HEIF without an ICC profile may describe its colour with
    ``nclx`` code points instead: :mod:`cdc.colour_nclx`.
    """
    data = img.info.get("icc_profile")
    if not data or not isinstance(data, bytes):
        return nclx_to_srgb(img)  # a HEIF's code points, where it has no ICC profile
    source = img
    if img.mode == "P":  # the palette's colours are in the profile's space too
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode not in _MODES:
        return source, ""
    if len(data) > MAX_PROFILE_BYTES:
        return source, (f"colour profile of {len(data)} bytes ignored "
                        f"(over the {MAX_PROFILE_BYTES >> 20} MiB limit)")
    try:
        from PIL import ImageCms  # noqa: F401 - Pillow built without littlecms lacks it
    except ImportError:
        return source, "colour profile not applied (Pillow has no littlecms)"
    got = _transform(data, img.mode)
    if isinstance(got, str):
        return source, got
    transform, desc, is_srgb = got
    if is_srgb:
        return source, ""
    from PIL import ImageCms

    try:
        out = ImageCms.applyTransform(img, transform)
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        return source, f"colour profile {desc} could not be applied ({e}): coded as stored"
    out.info = {k: v for k, v in source.info.items() if k != "icc_profile"}
    if source.mode != img.mode or img.mode == "CMYK":
        out.info[CONVERTED_INFO] = source.mode
    return out, f"colour profile {desc} converted to sRGB (colours outside sRGB clipped)"

