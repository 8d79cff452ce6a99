"""Embedded colour profiles: a photo in Adobe RGB or Display P3 is coded in sRGB, with a note
(cdc/colour.py, pipeline/files.py); sRGB under any name, and profiles that cannot be used,
change no pixel. The profiles are made here (a matrix/TRC ICC v2 writer below) and the
expected colours computed from their primaries with numpy, not with littlecms."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms
from typer.testing import CliRunner

from cdc import describe
from cdc.bitstream import SourceMode
from cdc.colour import CONVERTED_INFO, MAX_PROFILE_BYTES, to_srgb
from cdc.image import to_rgb_array
from pipeline.archive import InputItem, load_item
from pipeline.files import input_note, read_image
from pipeline.training.image_crops import read_image as read_training_image
from tests.conftest import smooth_image

D50 = (0.9642, 1.0, 0.8249)
#: D50-adapted colorants as Adobe's and Apple's own profiles state them.
ADOBE_RGB = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
DISPLAY_P3 = ((0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841))
SRGB = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))
GAMMA = 563 / 256  # Adobe RGB's 2.19921875, as u8Fixed8 stores it


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _icc(kind: bytes, space: bytes, pcs: bytes, desc: str, tags) -> bytes:
    """An ICC v2 profile: header, tag table, tags (each padded to 4 bytes)."""
    def text(d: str) -> bytes:
        t = d.encode("ascii") + b"\0"
        return b"desc\0\0\0\0" + struct.pack(">I", len(t)) + t + b"\0" * 8 + b"\0" * 70

    tags = [(b"desc", text(desc)), (b"wtpt", _xyz(D50))] + list(tags)
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + struct.pack(">I", 0x02100000)
              + kind + space + pcs + b"\0" * 12 + b"acsp" + b"\0" * 28
              + b"".join(_s15(c) for c in D50) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def _xyz(v) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in v)


def matrix_profile(colorants, gamma: float = GAMMA, desc: str = "Test RGB") -> bytes:
    """A display profile: white point, three colorants, one gamma curve for all three."""
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))
    return _icc(b"mntr", b"RGB ", b"XYZ ", desc,
                [(b"rXYZ", _xyz(colorants[0])), (b"gXYZ", _xyz(colorants[1])),
                 (b"bXYZ", _xyz(colorants[2])), (b"rTRC", curve), (b"gTRC", curve),
                 (b"bTRC", curve)])


#: Lab (D50) of the pure inks on white paper; any K, and so the darkest colour, is L* 0
#: (black-point compensation then changes nothing, and the corners are exact).
INKS = {(1, 0, 0): (55, -37, -50), (0, 1, 0): (48, 74, -3), (0, 0, 1): (89, -5, 93)}


def ink_lab(c: int, m: int, y: int, k: int) -> tuple[float, float, float]:
    """Lab of one corner of the CMYK cube (0/1 per ink): overprints darker and duller."""
    if k:
        return (0.0, 0.0, 0.0)
    inks = [INKS[t] for t in ((1, 0, 0), (0, 1, 0), (0, 0, 1)) if (c, m, y)[t.index(1)]]
    if not inks:
        return (100.0, 0.0, 0.0)
    if len(inks) == 1:
        return inks[0]
    return (max(8, 100 - sum(100 - i[0] for i in inks)),
            0.6 * float(np.mean([i[1] for i in inks])), 0.6 * float(np.mean([i[2] for i in inks])))


def cmyk_profile(desc: str = "Test CMYK") -> bytes:
    """A printer profile whose A2B0 (lut8, 2 grid points a channel) holds :func:`ink_lab`."""
    clut = b"".join(bytes([round(L * 2.55), round(a + 128), round(b + 128)])
                    for L, a, b in (ink_lab(*c) for c in itertools.product((0, 1), repeat=4)))
    ramp = bytes(range(256))
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a2b0 = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + identity + ramp * 4 + clut + ramp * 3
    return _icc(b"prtr", b"CMYK", b"Lab ", desc, [(b"A2B0", a2b0)])


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    L, a, b = np.moveaxis(np.asarray(lab, np.float64), -1, 0)
    fy = (L + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200], -1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array(D50)
    return _encode_srgb(xyz)


def _encode_srgb(xyz: np.ndarray) -> np.ndarray:
    s = np.clip(xyz @ np.linalg.inv(np.array(SRGB)), 0, 1)
    return np.round(np.where(s <= 0.0031308, 12.92 * s, 1.055 * s ** (1 / 2.4) - 0.055) * 255)


def expected_srgb(rgb: np.ndarray, colorants, gamma: float = GAMMA) -> np.ndarray:
    """The same colours in sRGB, from the primaries: linearise, to XYZ (D50), to linear
    sRGB (inverse of its D50 colorants), clip, sRGB's transfer curve."""
    return _encode_srgb(((rgb.astype(np.float64) / 255) ** gamma) @ np.array(colorants))


def _patches() -> np.ndarray:
    """8x8 patches of saturated and mid colours, a grey ramp and skin tones."""
    colours = [(200, 100, 50), (40, 180, 60), (30, 60, 200), (220, 30, 40), (128, 128, 128),
               (255, 255, 255), (0, 0, 0), (224, 172, 150), (90, 60, 40), (60, 200, 220)]
    return np.repeat(np.repeat(np.array(colours, np.uint8)[None], 8, 0), 8, 1)


def _saved(tmp_path: Path, name: str, arr: np.ndarray, profile: bytes | None, mode="RGB",
           fmt="PNG") -> Path:
    p = tmp_path / name
    img = Image.fromarray(arr, mode) if mode != "CMYK" else Image.fromarray(arr, "RGB")
    kw = {"icc_profile": profile} if profile else {}
    img.save(p, fmt, **kw)
    return p


@pytest.mark.parametrize("colorants,name", [(ADOBE_RGB, "Adobe RGB (1998)"),
                                            (DISPLAY_P3, "Display P3")])
def test_a_wide_gamut_photo_is_coded_in_srgb(tmp_path: Path, colorants, name: str):
    arr = _patches()
    path = _saved(tmp_path, "wide.png", arr, matrix_profile(colorants, desc=name))
    img = read_image(path)
    got = np.asarray(img).astype(int)
    want = expected_srgb(arr, colorants)
    assert np.abs(got - want).max() <= 2, (got[0, ::8], want[0, ::8])
    assert np.abs(got - arr.astype(int)).max() >= 20  # the colours did move: Adobe red
    assert input_note(img) == (f"colour profile {name!r} converted to sRGB "
                               "(colours outside sRGB clipped)")
    assert "icc_profile" not in img.info
    again, mode = to_rgb_array(img)  # the codec's own conversion does not apply it twice
    assert mode == SourceMode.RGB and np.array_equal(again, np.asarray(img))
    ld = load_item(InputItem("wide.png", str(path)))
    assert ld.note == input_note(img) and ld.error == ""


def test_srgb_under_any_name_changes_nothing(tmp_path: Path):
    arr = smooth_image(24, 40)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = read_image(_saved(tmp_path, "s.png", arr, srgb))
    assert input_note(img) == "" and np.array_equal(np.asarray(img), arr)
    # sRGB's primaries with a pure 2.2 curve is not sRGB: up to a few levels in the shadows
    img = read_image(_saved(tmp_path, "g.png", arr, matrix_profile(SRGB, 2.2, "sRGB 2.2")))
    assert input_note(img).startswith("colour profile 'sRGB 2.2' converted")
    assert 0 < np.abs(np.asarray(img).astype(int) - arr).max() <= 8
    plain = read_image(_saved(tmp_path, "plain.png", arr, None))
    assert input_note(plain) == "" and np.array_equal(np.asarray(plain), arr)


def test_unusable_profiles_are_ignored_with_a_note(tmp_path: Path):
    arr = smooth_image(16, 16)
    img = Image.fromarray(arr)
    img.info["icc_profile"] = b"not a profile at all" * 4
    out, note = to_srgb(img)
    assert out is img and note.startswith("unreadable colour profile ignored")
    assert np.array_equal(np.asarray(out), arr)
    img.info["icc_profile"] = b"\0" * (MAX_PROFILE_BYTES + 1)
    out, note = to_srgb(img)  # refused from its length, before littlecms reads it
    assert out is img and note == (f"colour profile of {MAX_PROFILE_BYTES + 1} bytes ignored "
                                   "(over the 8 MiB limit)")
    cmyk = Image.new("CMYK", (8, 8), (10, 20, 30, 40))
    cmyk.info["icc_profile"] = matrix_profile(ADOBE_RGB)  # an RGB profile on CMYK samples
    out, note = to_srgb(cmyk)
    assert out is cmyk and note == "colour profile for RGB ignored on a CMYK image"
    assert to_rgb_array(cmyk)[1] == SourceMode.CONVERTED
    gray = Image.fromarray(arr[..., 0])
    gray.info["icc_profile"] = matrix_profile(ADOBE_RGB)
    assert to_srgb(gray) == (gray, "")  # grey keeps its samples


def test_a_transform_that_fails_keeps_the_pixels_and_says_so(monkeypatch):
    img = Image.fromarray(_patches())
    img.info["icc_profile"] = matrix_profile(DISPLAY_P3, desc="Display P3")

    def broken(*args, **kwargs):
        raise ImageCms.PyCMSError("cannot transform")

    monkeypatch.setattr(ImageCms, "applyTransform", broken)
    out, note = to_srgb(img)
    assert out is img and note == ("colour profile 'Display P3' could not be applied "
                                   "(cannot transform): coded as stored")


def test_alpha_and_palette_keep_their_source_mode(tmp_path: Path):
    prof = matrix_profile(ADOBE_RGB, desc="Adobe RGB (1998)")
    arr = _patches()
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 77, np.uint8)], -1)
    img = Image.fromarray(rgba, "RGBA")
    img.info["icc_profile"] = prof
    out, note = to_srgb(img)
    assert out.mode == "RGBA" and "converted" in note
    assert np.all(np.asarray(out)[..., 3] == 77)
    rgb, mode = to_rgb_array(img)  # an API caller's image: converted, alpha dropped
    assert mode == SourceMode.ALPHA_DROPPED
    assert np.abs(rgb.astype(int) - expected_srgb(arr, ADOBE_RGB)).max() <= 2
    pal = Image.fromarray(arr).quantize(16)
    pal.info["icc_profile"] = prof
    rgb, mode = to_rgb_array(pal)
    assert mode == SourceMode.PALETTE
    want = expected_srgb(np.asarray(pal.convert("RGB")), ADOBE_RGB)
    assert np.abs(rgb.astype(int) - want).max() <= 2
    assert CONVERTED_INFO not in Image.fromarray(arr).info


def test_a_cmyk_file_is_converted_through_its_profile(tmp_path: Path):
    corners = list(itertools.product((0, 255), repeat=4))
    img = Image.new("CMYK", (len(corners), 4))
    img.putdata(corners * 4)
    path = tmp_path / "print.tif"
    img.save(path, "TIFF", icc_profile=cmyk_profile("Press CMYK"))
    got = read_image(path)
    assert got.mode == "RGB" and input_note(got).startswith("colour profile 'Press CMYK'")
    want = lab_to_srgb([ink_lab(*(v // 255 for v in c)) for c in corners])
    rgb, mode = to_rgb_array(got)
    assert mode == SourceMode.CONVERTED  # the stream still says the source was not RGB
    assert np.abs(rgb[0].astype(int) - want).max() <= 3, (rgb[0], want)
    naive = np.asarray(Image.open(path).convert("RGB"))[0].astype(int)  # Pillow, no profile
    assert np.abs(naive - want).max() > 60  # (pure cyan is (0, 255, 255) there)


def test_training_crops_see_srgb_too(tmp_path: Path):
    arr = _patches()
    path = _saved(tmp_path, "t.png", arr, matrix_profile(ADOBE_RGB))
    got = np.asarray(read_training_image(str(path)).convert("RGB")).astype(int)
    assert np.abs(got - expected_srgb(arr, ADOBE_RGB)).max() <= 2


@pytest.mark.timeout(120)
def test_cli_compress_says_the_profile_was_applied(tmp_path: Path, weights_file: str):
    from jobs.cli import app

    arr = smooth_image(40, 56)
    path = _saved(tmp_path, "p3.jpg", arr, matrix_profile(DISPLAY_P3, desc="Display P3"),
                  fmt="JPEG")
    stream = tmp_path / "p3.cdc"
    r = CliRunner().invoke(app, ["compress", str(path), str(stream), "--model", weights_file])
    assert r.exit_code == 0, r.output
    note = "colour profile 'Display P3' converted to sRGB (colours outside sRGB clipped)"
    assert r.stderr.strip() == f"warning: {path}: {note}"
    assert f"({note})" in r.stdout
    assert describe(stream.read_bytes())["width"] == 56
