"""Phone and camera formats Pillow does not read by itself: HEIC/HEIF (pillow-heif) and
JPEG XL (imagecodecs), through the reader every command uses. The files are made here."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import imagecodecs
import numpy as np
import pillow_heif
import pytest
from PIL import Image
from typer.testing import CliRunner

from cdc import CDCCodec, describe
from cdc.image import SOURCE_BITS_INFO
from pipeline.archive import encode_shard, open_or_create, plan_inputs, plan_shards
from pipeline.files import InputError, decode_image, input_metadata, input_note
from pipeline.image_inputs import JXL_CONTAINER, jxl_size
from pipeline.photo_metadata import check_metadata, exif_bytes, source_digest
from tests.conftest import smooth_image

TAKEN = {"Make": "Apple", "Model": "iPhone 15", "DateTimeOriginal": "2024:05:06 07:08:09"}


def _exif(orientation: int = 1) -> bytes:
    e = Image.Exif()
    e.load(b"Exif\x00\x00" + exif_bytes(TAKEN))
    if orientation != 1:
        e[0x0112] = orientation
    return e.tobytes()


def _heic(arr: np.ndarray, orientation: int = 1, **kw) -> bytes:
    buf = io.BytesIO()
    pillow_heif.from_pillow(Image.fromarray(arr)).save(buf, quality=95, exif=_exif(orientation),
                                                       **kw)
    return buf.getvalue()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_heic_reads_with_its_metadata():
    src = smooth_image(48, 64, 0)
    img = decode_image(_heic(src), "IMG_0001.HEIC")
    assert img.mode == "RGB" and img.size == (64, 48)
    assert _psnr(np.asarray(img), src) > 30  # 4:2:0 at quality 95 on a textured image: 32 dB
    assert input_metadata(img) == TAKEN
    assert SOURCE_BITS_INFO not in img.info


def test_heic_rotation_is_applied_once():
    """A photo taken with the phone turned: stored 64x48, shown 48x64, like a JPEG with the
    same EXIF orientation."""
    src = smooth_image(48, 64, 1)
    img = decode_image(_heic(src, orientation=6), "turned.heic")
    buf = io.BytesIO()
    Image.fromarray(src).save(buf, "JPEG", quality=95, exif=_exif(6))
    ref = decode_image(buf.getvalue(), "turned.jpg")
    assert img.size == ref.size == (48, 64)
    assert _psnr(np.asarray(img), np.asarray(ref)) > 30  # the same way up
    assert _psnr(np.asarray(img), np.asarray(ref)[::-1, ::-1]) < 20


def test_a_multi_image_heic_codes_its_primary_image():
    """A HEIF holds several images and names one primary (what viewers show); it need not be
    the first (it used to code the first)."""
    first, primary = smooth_image(24, 32, 12), smooth_image(30, 40, 13)
    hf = pillow_heif.from_pillow(Image.fromarray(first))
    hf.add_from_pillow(Image.fromarray(primary))
    buf = io.BytesIO()
    hf.save(buf, quality=95, primary_index=1)
    img = decode_image(buf.getvalue(), "burst.heic")
    assert img.size == (40, 30) and _psnr(np.asarray(img), primary) > 30
    assert input_note(img) == "HEIF with 2 images: only the primary image is coded"


def test_ten_bit_heic_is_flagged_as_reduced():
    src = (smooth_image(32, 40, 2).astype(np.uint16) * 257)
    h = pillow_heif.from_bytes(mode="RGB;16", size=(40, 32), data=src.tobytes())
    buf = io.BytesIO()
    h.save(buf, quality=95)
    img = decode_image(buf.getvalue(), "hdr.heic")
    assert img.mode == "RGB" and img.info[SOURCE_BITS_INFO] == 16
    assert _psnr(np.asarray(img), (src // 257).astype(np.uint8)) > 30


@pytest.mark.parametrize("h,w", [(48, 64), (23, 37), (1080, 1920), (17, 256), (9000, 9)])
def test_jxl_size_header(h: int, w: int):
    arr = np.zeros((h, w, 3), np.uint8)
    assert jxl_size(imagecodecs.jpegxl_encode(arr, level=50, effort=1)) == (w, h)


def test_jxl_reads_lossless_and_high_bit_depth():
    src = smooth_image(30, 44, 3)
    img = decode_image(imagecodecs.jpegxl_encode(src, lossless=True), "a.jxl")
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), src)
    grey16 = (smooth_image(20, 24, 4)[..., 0].astype(np.uint16) * 257 + 100)
    img = decode_image(imagecodecs.jpegxl_encode(grey16, lossless=True), "g.jxl")
    assert img.mode == "L" and img.info[SOURCE_BITS_INFO] == 16
    assert np.abs(np.asarray(img).astype(int) - (grey16 / 257).round()).max() <= 1


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def test_jxl_container_exif_is_read_and_its_orientation_not_applied_twice():
    src = smooth_image(30, 44, 5)
    cs = imagecodecs.jpegxl_encode(src, lossless=True)
    tiff = _exif(orientation=6)[6:]  # libjxl applies the codestream's orientation; the
    # EXIF copy (here 6, disagreeing) must not rotate the pixels a second time
    data = (JXL_CONTAINER + _box(b"ftyp", b"jxl \x00\x00\x00\x00jxl ")
            + _box(b"Exif", b"\x00\x00\x00\x00" + tiff) + _box(b"jxlc", cs))
    img = decode_image(data, "c.jxl")
    assert img.size == (44, 30) and np.array_equal(np.asarray(img), src)
    assert input_metadata(img) == TAKEN
    parts = (JXL_CONTAINER + _box(b"ftyp", b"jxl \x00\x00\x00\x00jxl ")
             + _box(b"jxlp", b"\x00\x00\x00\x00" + cs[:40])
             + _box(b"jxlp", b"\x80\x00\x00\x01" + cs[40:]))
    assert jxl_size(parts) == (44, 30)
    assert np.array_equal(np.asarray(decode_image(parts, "p.jxl")), src)


def _huge_codestream(height: int, ratio: int) -> bytes:
    """A JPEG XL signature and a size header only: div8 = 0, a 30-bit height, a ratio."""
    value = 0
    pos = 0
    for n, v in ((1, 0), (2, 3), (30, height - 1), (3, ratio)):
        value |= v << pos
        pos += n
    return b"\xff\x0a" + value.to_bytes((pos + 7) // 8, "little") + b"\x00" * 8


def test_hostile_jxl_is_refused_from_its_header():
    data = _huge_codestream(100_000, 7)  # 200000 x 100000, 20 G pixels
    assert jxl_size(data) == (200_000, 100_000)
    with pytest.raises(InputError, match="200000x100000") as e:
        decode_image(data, "bomb.jxl")
    assert str(e.value).startswith("bomb.jxl: ")
    good = imagecodecs.jpegxl_encode(smooth_image(30, 44, 6), level=90)
    for bad in (good[:3], good[:len(good) // 2], JXL_CONTAINER + b"\x00\x00\x00\xffjxlc"):
        with pytest.raises(InputError, match="corrupt or truncated") as e:
            decode_image(bad, "cut.jxl")
        assert str(e.value).startswith("cut.jxl: ") and "\n" not in str(e.value)


@pytest.mark.timeout(90)
def test_phone_folder_archives_and_compresses(tmp_path: Path, codec: CDCCodec,
                                               weights_file: str):
    root = tmp_path / "DCIM"
    root.mkdir()
    (root / "IMG_0001.HEIC").write_bytes(_heic(smooth_image(48, 64, 7)))
    (root / "IMG_0002.heif").write_bytes(_heic(smooth_image(40, 56, 8)))
    (root / "scan.jxl").write_bytes(imagecodecs.jpegxl_encode(smooth_image(32, 48, 9),
                                                              level=95))
    items, _ = plan_inputs(str(root))
    arch, _ = open_or_create(str(tmp_path / "phone.zarr"), codec, shard_size=8)
    shard = list(encode_shard(codec, arch, plan_shards(items, set(), set(), 8)[0]))[-1]
    assert (shard["images"], shard["ok"], shard["failed"]) == (3, 3, 0), shard["failures"]
    meta = arch.metadata("IMG_0001.HEIC")
    assert meta == {**TAKEN, "FileModified": meta["FileModified"],
                    "SourceSHA256": source_digest((root / "IMG_0001.HEIC").read_bytes())[
                        "SourceSHA256"]}
    assert describe(arch["scan.jxl"].data)["width"] == 48
    from jobs.cli import app

    out = tmp_path / "x.cdc"
    r = CliRunner().invoke(app, ["compress", str(root / "IMG_0001.HEIC"), str(out),
                                 "--model", weights_file])
    assert r.exit_code == 0, r.output
    assert describe(out.read_bytes())["height"] == 48


def test_training_reader_reads_them_too(tmp_path: Path):
    from pipeline.training.image_crops import read_image

    src = smooth_image(30, 44, 10)
    (tmp_path / "a.jxl").write_bytes(imagecodecs.jpegxl_encode(src, lossless=True))
    (tmp_path / "b.heic").write_bytes(_heic(src))
    assert np.array_equal(np.asarray(read_image(str(tmp_path / "a.jxl"))), src)
    assert _psnr(np.asarray(read_image(str(tmp_path / "b.heic")).convert("RGB")), src) > 30


# -- HEIF nclx colour (code points instead of an ICC profile) --------------------------------
#: Display P3 → sRGB in linear light, as published (e.g. the CSS Color 4 conversions).
P3_TO_SRGB = np.array([[1.2249401, -0.2249404, 0.0],
                       [-0.0420569, 1.0420571, 0.0],
                       [-0.0196376, -0.0786361, 1.0982735]])


def _srgb_decode(v):
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(v):
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def _heic_nclx(colour: tuple[int, int, int], primaries: int, transfer: int = 13) -> bytes:
    h = pillow_heif.from_pillow(Image.new("RGB", (32, 32), colour))
    h.info["nclx_profile"] = {"color_primaries": primaries, "transfer_characteristics": transfer,
                              "matrix_coefficients": 6, "full_range_flag": 1}
    buf = io.BytesIO()
    h.save(buf, quality=100, chroma=444)
    return buf.getvalue()


def test_display_p3_nclx_is_converted_to_srgb():
    colour = (200, 120, 60)
    raw = np.asarray(Image.open(io.BytesIO(_heic_nclx(colour, 12)))).reshape(-1, 3).mean(0)
    img = decode_image(_heic_nclx(colour, 12), "p3.heic")
    got = np.asarray(img).reshape(-1, 3).mean(0)
    want = _srgb_encode(np.clip(P3_TO_SRGB @ _srgb_decode(raw / 255), 0, 1)) * 255
    assert np.abs(got - want).max() <= 1.0, (got, want)
    assert np.abs(got - raw).max() >= 10  # the colours did move
    assert "Display P3 (HEIF nclx) converted to sRGB" in img.info["cdc_note"]
    srgb = decode_image(_heic_nclx(colour, 1), "srgb.heic")  # BT.709 primaries: untouched
    assert "cdc_note" not in srgb.info
    assert np.abs(np.asarray(srgb).reshape(-1, 3).mean(0) - colour).max() <= 2


def test_hdr_nclx_is_coded_as_stored_with_a_note():
    img = decode_image(_heic_nclx((200, 120, 60), 9, transfer=16), "hdr.heic")
    assert "HDR colour (PQ transfer, BT.2020 primaries) coded as stored" in img.info["cdc_note"]


@pytest.mark.parametrize("kind", ["jxl", "heic", "jpeg"])
def test_damaged_files_fail_in_one_line_or_read(kind: str):
    """Mutated and truncated photos with EXIF (orientation included): each is read or
    refused with InputError, never another exception; what is read has clean metadata. (A
    mutated JPEG XL container's EXIF used to raise struct.error when re-serialised.)"""
    rng = np.random.default_rng(0)
    src = smooth_image(40, 56, 11)
    if kind == "jxl":
        seed = (JXL_CONTAINER + _box(b"ftyp", b"jxl \x00\x00\x00\x00jxl ")
                + _box(b"Exif", b"\x00\x00\x00\x00" + _exif(6)[6:])
                + _box(b"jxlc", imagecodecs.jpegxl_encode(src, level=80)))
    elif kind == "heic":
        seed = _heic(src, orientation=6)
    else:
        buf = io.BytesIO()
        xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
               b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
               b' xmp:Rating="4"/></rdf:RDF></x:xmpmeta>')
        Image.fromarray(src).save(buf, "JPEG", quality=80, exif=_exif(6), xmp=xmp)
        seed = buf.getvalue()
    read = 0
    for _ in range(80):
        d = bytearray(seed)
        if rng.random() < 0.3:
            d = d[: rng.integers(0, len(d))]
        else:
            for _ in range(rng.integers(1, 8)):  # mostly in the headers, boxes and EXIF
                p = int(rng.integers(0, min(len(d), 400) if rng.random() < 0.7 else len(d)))
                d[p] = int(rng.integers(0, 256))
        try:
            img = decode_image(bytes(d), "f")
        except InputError as e:
            assert str(e).startswith("f: ") and "\n" not in str(e)
            continue
        read += 1
        check_metadata(input_metadata(img), "f")
    assert 0 < read < 80
