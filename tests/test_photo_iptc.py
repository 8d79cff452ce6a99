"""IPTC-IIM captions, keywords, credits and dates (older tools' APP13) read as a fallback."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

from pipeline.files import decode_image, input_metadata
from pipeline.photo_iptc import parse_iim, read_iptc
from pipeline.photo_metadata import check_metadata, read_metadata


def _ds(record: int, dataset: int, value: bytes) -> bytes:
    if len(value) < 0x8000:
        return bytes([0x1C, record, dataset]) + len(value).to_bytes(2, "big") + value
    return bytes([0x1C, record, dataset, 0x80, 0x04]) + len(value).to_bytes(4, "big") + value


def _jpeg_with_iim(iim: bytes, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.full((16, 24, 3), 120, np.uint8))
    img.save(buf, "JPEG", **({"exif": exif} if exif is not None else {}))
    data = buf.getvalue()
    res = b"8BIM" + (0x0404).to_bytes(2, "big") + b"\x00\x00" + len(iim).to_bytes(4, "big") + iim
    res += b"\x00" * (len(iim) % 2)
    body = b"Photoshop 3.0\x00" + res
    app13 = b"\xff\xed" + (len(body) + 2).to_bytes(2, "big") + body
    return data[:2] + app13 + data[2:]


CAPTION = "Ein Bär am Fluss, " + "lang " * 40  # over 132 bytes: Pillow's parser refuses it


def _iim(charset_utf8: bool = True) -> bytes:
    enc = "utf-8" if charset_utf8 else "latin-1"
    return ((_ds(1, 90, b"\x1b%G") if charset_utf8 else b"") + _ds(2, 0, b"\x00\x04")
            + _ds(2, 5, "Bär".encode(enc)) + _ds(2, 120, CAPTION.encode(enc))
            + _ds(2, 25, b"river") + _ds(2, 25, b"bear") + _ds(2, 25, b"river")
            + _ds(2, 80, b"A. Photographer") + _ds(2, 116, b"(c) 1998 Agency")
            + _ds(2, 55, b"19980704") + _ds(2, 60, b"182210+0200"))


def test_fields_read_from_app13():
    img = Image.open(io.BytesIO(_jpeg_with_iim(_iim())))
    got = read_iptc(img, 512)
    assert got == {"XmpTitle": "Bär", "XmpDescription": CAPTION.strip(),
                   "XmpKeywords": ["river", "bear"], "Artist": "A. Photographer",
                   "Copyright": "(c) 1998 Agency", "DateTimeOriginal": "1998:07:04 18:22:10",
                   "OffsetTimeOriginal": "+02:00"}
    assert check_metadata(got, "x") == got  # what the writers accept


def test_latin1_without_a_declared_character_set():
    img = Image.open(io.BytesIO(_jpeg_with_iim(_iim(charset_utf8=False))))
    assert read_iptc(img, 512)["XmpTitle"] == "Bär"


def test_exif_and_xmp_win_over_iim():
    exif = Image.Exif()
    exif[0x013B] = "Exif Artist"
    exif.get_ifd(0x8769)[0x9003] = "2021:01:02 03:04:05"
    img = Image.open(io.BytesIO(_jpeg_with_iim(_iim(), exif)))
    meta = read_metadata(img)
    assert meta["Artist"] == "Exif Artist" and meta["DateTimeOriginal"] == "2021:01:02 03:04:05"
    assert "OffsetTimeOriginal" not in meta  # the IIM offset belongs to the IIM date
    assert meta["XmpTitle"] == "Bär" and meta["Copyright"] == "(c) 1998 Agency"


def test_the_codec_reader_keeps_iim_fields():
    img = decode_image(_jpeg_with_iim(_iim()), "scan.jpg")
    assert input_metadata(img)["XmpKeywords"] == ["river", "bear"]


def test_extended_and_malformed_datasets():
    long = b"x" * 40_000
    assert parse_iim(_ds(2, 120, long) + _ds(2, 5, b"t"))[(2, 5)] == [b"t"]
    assert parse_iim(_ds(2, 120, long))[(2, 120)] == [long]
    cut = _ds(2, 5, b"title") + _ds(2, 120, b"caption")[:-3]
    assert parse_iim(cut) == {(2, 5): [b"title"]}  # what came before the damage is kept
    assert parse_iim(b"\x1c\x02\x05\x80\x09" + b"\x00" * 20) == {}  # length of length 9
    bad_date = _ds(2, 55, b"19981304") + _ds(2, 60, b"250000")
    img = Image.open(io.BytesIO(_jpeg_with_iim(bad_date)))
    assert read_iptc(img, 512) == {}


def test_fuzzed_blocks_never_raise():
    rng = random.Random(7)
    good = bytearray(_iim())
    for _ in range(300):
        b = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        b = b[:rng.randrange(1, len(b) + 1)]
        img = Image.open(io.BytesIO(_jpeg_with_iim(bytes(b))))
        got = read_metadata(img)
        assert check_metadata(got, "fuzz") == got
