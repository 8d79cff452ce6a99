"""A photo's metadata in a single stream file (section M): attached, detached, bounded, and
carried through `cdc compress` / `cdc decompress`."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from cdc.bitstream import Container, write_varint
from cdc.errors import BitstreamError, CorruptStreamError
from cdc.stream_metadata import MAX_DEFLATED, attach, detach
from tests.test_photo_metadata import CAMERA, _camera_exif, _jpeg
from tests.tiny_refine import refine_bytes

META = json.dumps({"Make": "Canon", "DateTimeOriginal": "2021:07:04 18:22:10"}).encode()


def _stream() -> bytes:
    return Container("cdc", b"\x01" * 8, 40, 60, 7, 0,
                     {"Z": bytes(range(30)), "Y": bytes(range(200))}).pack()


def _with_raw_m(stream: bytes, payload: bytes, after: bytes = b"") -> bytes:
    """A whole file whose M section holds ``payload`` as it is (and ``after`` it)."""
    body = stream[:-4] + b"M" + write_varint(len(payload)) + payload + after
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def test_attach_then_detach_gives_back_the_stream_byte_for_byte():
    s = _stream()
    f = attach(s, META)
    assert len(f) > len(s) and f.startswith(s[:-4])
    assert detach(f) == (s, META)
    assert detach(s) == (s, None)  # a stream without M is left as it is
    assert attach(s, b"") == s
    assert Container.unpack(detach(f)[0]).sections == Container.unpack(s).sections


def test_attach_refuses_prefixes_repeats_and_large_metadata():
    s = _stream()
    with pytest.raises(ValueError, match="complete stream"):
        attach(s[:-10], META)
    with pytest.raises(ValueError, match="already"):
        attach(attach(s, META), META)
    with pytest.raises(ValueError, match="over 4096"):
        attach(s, b"x" * 4097)


def test_a_prefix_is_cut_where_m_begins():
    s = _stream()
    f = attach(s, META)
    m_start = len(s) - 4
    for n in range(m_start + 1, len(f)):  # a prefix that reaches into M (or its trailer)
        got, meta = detach(f[:n])
        assert meta is None and got == f[:m_start], n
    for n in (20, 40, m_start):  # one that ends before: untouched, for the codec to judge
        assert detach(f[:n]) == (f[:n], None)


@pytest.mark.parametrize("build, problem", [
    (lambda s: _with_raw_m(s, zlib.compress(META), b"Q\x00"), "must be the last"),
    (lambda s: _with_raw_m(s, b"\x00" * (MAX_DEFLATED + 1)), "over 8192"),
    (lambda s: _with_raw_m(s, zlib.compress(b"{" * 100_000)), "4096 bytes or fewer"),
    (lambda s: _with_raw_m(s, b"not deflate"), "does not inflate"),
    (lambda s: _with_raw_m(s, zlib.compress(META)[:-3]), "4096 bytes or fewer"),
])
def test_hostile_metadata_sections_are_refused(build, problem: str):
    with pytest.raises(CorruptStreamError, match=problem):
        detach(build(_stream()))


def test_a_damaged_whole_file_is_refused_and_mutations_never_crash():
    f = bytearray(attach(_stream(), META))
    f[-8] ^= 0x40  # inside M's payload
    with pytest.raises(CorruptStreamError, match="checksum"):
        detach(bytes(f))
    rng = random.Random(0)
    good = attach(_stream(), META)
    for _ in range(500):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        try:
            stream, meta = detach(bytes(b[:rng.randint(0, len(b))] if rng.random() < 0.3
                                        else b))
        except BitstreamError:
            continue
        assert meta is None or len(meta) <= 4096


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True,
                          text=True)


def test_compress_and_decompress_carry_the_photos_metadata(tmp_path: Path):
    """The round trip a user makes: the rebuilt JPEG has the camera, date and place, and the
    original's file time; no-gps and none drop what they say, at either end."""
    from pipeline.files import decode_image, input_metadata

    w = tmp_path / "w.pt"
    w.write_bytes(refine_bytes(0))
    src = _jpeg(tmp_path / "photo.jpg", exif=_camera_exif().tobytes())
    os.utime(src, (1_600_000_000, 1_600_000_000))
    r = _cli("compress", str(src), str(tmp_path / "p.cdc"), "-m", str(w))
    assert r.returncode == 0 and "of them metadata" in r.stdout, r.stdout + r.stderr
    r = _cli("info", str(tmp_path / "p.cdc"))
    assert r.returncode == 0 and "DateTimeOriginal" in r.stdout and "GPSLatitude" in r.stdout
    r = _cli("decompress", str(tmp_path / "p.cdc"), str(tmp_path / "back.jpg"))
    assert r.returncode == 0, r.stderr
    back = tmp_path / "back.jpg"
    assert input_metadata(decode_image(back.read_bytes(), "back.jpg")) == CAMERA
    assert back.stat().st_mtime == 1_600_000_000
    r = _cli("decompress", str(tmp_path / "p.cdc"), str(tmp_path / "nogps.png"),
             "--metadata", "no-gps")
    got = input_metadata(decode_image((tmp_path / "nogps.png").read_bytes(), "n.png"))
    assert r.returncode == 0 and got["Make"] == "Canon" and "GPSLatitude" not in got
    for where in ("compress", "decompress"):
        stream = tmp_path / ("n.cdc" if where == "compress" else "p.cdc")
        if where == "compress":
            assert _cli("compress", str(src), str(stream), "-m", str(w), "--metadata",
                        "none").returncode == 0
            assert detach(stream.read_bytes())[1] is None  # a bare stream
        r = _cli("decompress", str(stream), str(tmp_path / f"{where}.png"), "--metadata",
                 "none" if where == "decompress" else "keep")
        assert r.returncode == 0, r.stderr
        img = Image.open(tmp_path / f"{where}.png")
        assert "exif" not in img.info


def test_metadata_a_writer_does_not_write_is_one_line(tmp_path: Path):
    from pipeline.archive.outputs import output_format  # noqa: F401 - the package imports

    w = tmp_path / "w.pt"
    w.write_bytes(refine_bytes(0))
    src = _jpeg(tmp_path / "photo.jpg")
    assert _cli("compress", str(src), str(tmp_path / "p.cdc"), "-m", str(w),
                "--metadata", "none").returncode == 0
    bad = tmp_path / "bad.cdc"
    bad.write_bytes(attach((tmp_path / "p.cdc").read_bytes(), b'{"Orientation": 6}'))
    r = _cli("decompress", str(bad), str(tmp_path / "o.png"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "unknown tag 'Orientation'" in lines[0]
    assert "--metadata none" in lines[0] and not (tmp_path / "o.png").exists()
    assert _cli("decompress", str(bad), str(tmp_path / "o.png"), "--metadata",
                "none").returncode == 0


def test_a_rate_target_counts_the_metadata(tmp_path: Path):
    """The file meets --rate with its metadata in; where the metadata would take over half
    of the rate it is left out, and the command says so."""
    w = tmp_path / "w.pt"
    w.write_bytes(refine_bytes(0))
    src = _jpeg(tmp_path / "photo.jpg", h=96, w=128, exif=_camera_exif().tobytes())
    out = tmp_path / "p.cdc"
    r = _cli("compress", str(src), str(out), "-m", str(w), "--rate", "0.8")
    assert r.returncode == 0 and "of them metadata" in r.stdout, r.stdout + r.stderr
    assert 8 * out.stat().st_size / (96 * 128) <= 0.8 and detach(out.read_bytes())[1]
    r = _cli("compress", str(src), str(out), "-m", str(w), "--rate", "0.05")
    assert r.returncode == 0 and "metadata left out: it would take over half" in r.stdout
    assert detach(out.read_bytes())[1] is None
