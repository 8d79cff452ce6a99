"""A photo's capture metadata: read from the file, kept (or not, by policy) in the archive
beside its record, checked when read back, and written into `cdc get`'s outputs.

The photos are made here (Pillow writes their EXIF): a camera JPEG with the orientation,
a maker note and a serial number that must not be kept, a GPS position that `no-gps` must
drop, and a file whose EXIF is garbage.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cdc import CDCCodec
from pipeline.archive import EncodeOptions, encode_shard, open_or_create, plan_inputs, plan_shards
from pipeline.archive.outputs import stored_metadata
from pipeline.files import decode_image, input_metadata
from pipeline.photo_metadata import (
    MAX_JSON_BYTES,
    MetadataError,
    apply_policy,
    check_metadata,
    dumps,
    embed,
    exif_bytes,
    read_metadata,
    taken,
)
from storage import Archive, CorruptArchiveError, Record, ShardCompleteError
from tests.conftest import smooth_image

CAMERA = {
    "Make": "Canon", "Model": "Canon EOS R6", "DateTime": "2021:07:04 18:22:10",
    "DateTimeOriginal": "2021:07:04 18:22:10", "OffsetTimeOriginal": "+02:00",
    "SubsecTimeOriginal": "25", "ExposureTime": [1, 250], "FNumber": [14, 5],
    "ISOSpeedRatings": 400, "FocalLength": [50, 1], "ExposureBiasValue": [-1, 3],
    "LensModel": "RF50mm F1.8 STM", "Artist": "A. Photographer",
    "GPSLatitudeRef": "N", "GPSLatitude": [[48, 1], [51, 1], [2409, 100]],
    "GPSLongitudeRef": "E", "GPSLongitude": [[2, 1], [17, 1], [403, 10]],
    "GPSAltitudeRef": 0, "GPSAltitude": [35, 1],
}  # rationals in lowest terms, as Pillow reads and writes them


def _camera_exif() -> Image.Exif:
    """CAMERA as a camera writes it, plus what must not be kept: the orientation (the
    pixels are stored upright), a maker note and the body's serial number."""
    exif = Image.Exif()
    exif.load(b"Exif\x00\x00" + exif_bytes(CAMERA))
    exif[0x0112] = 6  # Orientation: rotate 90 CW to view
    ex = exif.get_ifd(0x8769)
    ex[0x927C] = b"MAKERNOTE" * 300  # MakerNote: several KiB of vendor data
    ex[0xA431] = "0123456789"  # BodySerialNumber
    return exif


def _jpeg(path: Path, h: int = 48, w: int = 64, seed: int = 0, exif: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(h, w, seed)).save(path, "JPEG", quality=95, exif=exif)
    return path


def test_reading_keeps_the_listed_tags_and_nothing_else(tmp_path: Path):
    raw = _camera_exif().tobytes()
    img = decode_image(_jpeg(tmp_path / "c.jpg", exif=raw).read_bytes(), "c.jpg")
    assert img.size == (48, 64)  # stored 64x48 with "rotate 90": upright now
    meta = input_metadata(img)
    assert meta == CAMERA  # no Orientation, MakerNote or serial number
    assert len(dumps(meta)) < 700 < len(raw)  # the maker note alone is 2.7 KB
    plain = decode_image(_jpeg(tmp_path / "p.jpg").read_bytes(), "p.jpg")
    assert input_metadata(plain) == {}


def test_garbage_or_oversized_exif_is_dropped_and_the_photo_kept(tmp_path: Path):
    bad = _jpeg(tmp_path / "bad.jpg", exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff")
    img = decode_image(bad.read_bytes(), "bad.jpg")
    assert img.size == (64, 48) and input_metadata(img) == {}
    long = Image.Exif()
    long[0x010E] = "x" * 600  # a description over MAX_TEXT is left out, the rest kept
    long[0x010F] = "Nikon"
    long[0x013B] = "Ann\r\nand\tBob "  # Artist over lines: kept as one line
    assert read_metadata(Image.open(_jpeg(tmp_path / "l.jpg", exif=long.tobytes()))) == {
        "Make": "Nikon", "Artist": "Ann and Bob"}


def test_taken():
    assert taken(CAMERA) == "2021-07-04T18:22:10+02:00"
    assert taken({"DateTime": "2020:01:02 03:04:05"}) == "2020-01-02T03:04:05"
    assert taken({"DateTimeOriginal": "    :  :     :  :  ", "DateTime": "2020:01:02 03:04:05",
                  "OffsetTime": "bogus"}) == "2020-01-02T03:04:05"
    assert taken({"Make": "Canon"}) is None


def test_policies():
    assert apply_policy(CAMERA, "keep") == CAMERA
    kept = apply_policy(CAMERA, "no-gps")
    assert kept["DateTimeOriginal"] == "2021:07:04 18:22:10"
    assert not [k for k in kept if k.startswith("GPS")] and len(kept) == len(CAMERA) - 6
    assert apply_policy(CAMERA, "none") == {}
    digest = {"SourceSHA256": "0123456789abcdef" * 2}  # the source's bytes: under every policy
    for policy in ("keep", "no-gps", "none"):
        assert apply_policy({**CAMERA, **digest}, policy)["SourceSHA256"] == digest["SourceSHA256"]
    assert apply_policy({**CAMERA, **digest}, "none") == digest
    with pytest.raises(ValueError, match="keep, no-gps, none"):
        apply_policy(CAMERA, "strip")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("JPEG", {"quality": 90}),
                                    ("WEBP", {"lossless": True}), ("WEBP", {"quality": 80})])
def test_embedding_writes_exif_and_leaves_the_pixels(fmt: str, kw: dict):
    src = Image.fromarray(smooth_image(30, 41, 3))
    buf = io.BytesIO()
    src.save(buf, fmt, **kw)
    out = embed(buf.getvalue(), fmt, CAMERA)
    assert len(out) > len(buf.getvalue()) + 200
    back, plain = Image.open(io.BytesIO(out)), Image.open(io.BytesIO(buf.getvalue()))
    assert back.size == (41, 30) and read_metadata(back) == CAMERA
    assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(plain.convert("RGB")))
    assert embed(buf.getvalue(), fmt, {}) == buf.getvalue()


def test_formats_without_exif_come_back_unchanged():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "BMP")
    assert embed(buf.getvalue(), "BMP", CAMERA) == buf.getvalue()


@pytest.mark.parametrize("meta,problem", [
    ([1, 2], "not a JSON object"),
    ({"Orientation": 6}, "unknown tag 'Orientation'"),
    ({"Make": 7}, "'Make' has a bad value"),
    ({"Make": "a\nb"}, "'Make' has a bad value"),
    ({"ISOSpeedRatings": True}, "'ISOSpeedRatings' has a bad value"),
    ({"ISOSpeedRatings": 70000}, "'ISOSpeedRatings' has a bad value"),
    ({"ExposureTime": [1, 0]}, "'ExposureTime' has a bad value"),
    ({"ExposureTime": [-1, 250]}, "'ExposureTime' has a bad value"),
    ({"GPSLatitude": [[48, 1], [51, 1]]}, "'GPSLatitude' has a bad value"),
    ({"Make": "x" * 400, "Model": "y" * 400, "Artist": "z" * 400, "Software": "w" * 400,
      "Copyright": "v" * 400, "LensModel": "u" * 400, "LensMake": "t" * 400,
      "ImageDescription": "s" * 400, "DateTime": "r" * 400, "OffsetTime": "q" * 400,
      "SubsecTime": "p" * 400}, f"over {MAX_JSON_BYTES} bytes"),
])
def test_stored_metadata_is_checked(meta, problem: str):
    with pytest.raises(MetadataError, match=problem) as e:
        check_metadata(meta, "arch.zarr: a.jpg")
    assert str(e.value).startswith("arch.zarr: a.jpg: ")
    assert check_metadata(dict(CAMERA), "x") == CAMERA
    dated = {**CAMERA, "FileModified": "2020-09-13T12:26:40Z"}
    assert check_metadata(dated, "x") == dated
    with pytest.raises(MetadataError, match="'FileModified' has a bad value"):
        check_metadata({"FileModified": "2020-09-13 12:26:40"}, "x")
    digested = {**dated, "SourceSHA256": "0f" * 16}
    assert check_metadata(digested, "x") == digested
    for bad in ("0F" * 16, "0f" * 17, "0f" * 15, 12, ["0f" * 16]):
        with pytest.raises(MetadataError, match="'SourceSHA256' has a bad value"):
            check_metadata({"SourceSHA256": bad}, "x")
    # never written back into a rebuilt file
    assert exif_bytes({"SourceSHA256": "0f" * 16, "FileModified": dated["FileModified"]}) == b""


# -- storage: the per-shard metadata object -------------------------------------------------
def _archive(tmp_path: Path) -> Archive:
    return Archive.create(str(tmp_path / "m.zarr"), codec_id="toy", model_id="m",
                          weights_digest="sha256:00")


def test_archive_keeps_metadata_beside_records(tmp_path: Path):
    arch = _archive(tmp_path)
    arch.write_shard(0, [Record("a", b"xx", 2, 2, meta=CAMERA), Record("b", b"yy", 2, 2)])
    arch.write_shard(1, [Record("c", b"zz", 2, 2)])
    again = Archive.open(arch.url, read_only=True)
    assert again.metadata("a") == CAMERA and again.metadata("b") == {}
    assert again.metadata("c") == {}  # a shard without metadata: no object, no read
    assert "meta_digest" in again.manifest(0) and "meta_digest" not in again.manifest(1)
    meta_dir = tmp_path / "m.zarr" / "meta"
    assert sorted(p.name for p in meta_dir.iterdir()) == ["00000000.json"]
    assert json.loads((meta_dir / "00000000.json").read_text())["records"] == {"a": CAMERA}
    assert again.verify()["records"] == 3
    assert again["a"].data == b"xx"  # the bitstream reads as before
    # the same records again: a no-op; other metadata under "exact" is refused
    arch.write_shard(0, [Record("a", b"xx", 2, 2, meta=CAMERA), Record("b", b"yy", 2, 2)],
                     if_complete="exact")
    with pytest.raises(ShardCompleteError):
        arch.write_shard(0, [Record("a", b"xx", 2, 2, meta={"Make": "Nikon"}),
                             Record("b", b"yy", 2, 2)], if_complete="exact")
    arch.discard_shard(0)
    assert not (meta_dir / "00000000.json").exists()


def test_record_metadata_is_bounded():
    with pytest.raises(ValueError, match="over 16384"):
        Record("a", b"x", 1, 1, meta={"Make": "x" * 17000})
    with pytest.raises(TypeError):
        Record("a", b"x", 1, 1, meta=["Make"])  # type: ignore[arg-type]


@pytest.mark.parametrize("damage,problem", [
    (lambda p: p.write_text('{"shard":0,"records":{"a":{"Make":"Nikon"}}}'),
     "does not match its manifest digest"),
    (lambda p: p.unlink(), "is missing"),
    (lambda p: p.write_bytes(b"{" * 20_000_000), "over"),
])
def test_damaged_metadata_is_refused_in_one_line(tmp_path: Path, damage, problem: str):
    arch = _archive(tmp_path)
    arch.write_shard(0, [Record("a", b"xx", 2, 2, meta=CAMERA)])
    damage(tmp_path / "m.zarr" / "meta" / "00000000.json")
    again = Archive.open(arch.url, read_only=True)
    with pytest.raises(CorruptArchiveError, match=problem) as e:
        again.metadata("a")
    assert "shard 0: metadata object" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CorruptArchiveError, match=problem):
        again.verify()
    assert again["a"].data == b"xx"  # the pixels are still there


# -- the pipeline and `cdc get` -------------------------------------------------------------
@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _jpeg(root / "camera.jpg", exif=_camera_exif().tobytes())
    _jpeg(root / "plain.jpg", seed=1)
    return root


def _archived(photos: Path, url: str, codec: CDCCodec, policy: str = "keep"
              ) -> tuple[Archive, dict]:
    items, _ = plan_inputs(str(photos))
    arch, _ = open_or_create(url, codec, shard_size=8)
    events = list(encode_shard(codec, arch, plan_shards(items, set(), set(), 8)[0],
                               options=EncodeOptions(metadata=policy)))  # type: ignore[arg-type]
    return Archive.open(arch.url), events[-1]


@pytest.mark.timeout(90)
def test_archive_job_stores_metadata_by_policy(photos: Path, tmp_path: Path, codec: CDCCodec):
    os.utime(photos / "camera.jpg", (1_600_000_000, 1_600_000_000))
    arch, shard = _archived(photos, str(tmp_path / "k.zarr"), codec)
    dated = {"FileModified": "2020-09-13T12:26:40Z"}  # the source file's time, kept like tar
    # and which bytes were archived: the first 128 bits of the source file's SHA-256
    digest = {"SourceSHA256": hashlib.sha256((photos / "camera.jpg").read_bytes()).hexdigest()[:32]}
    assert arch.metadata("camera.jpg") == {**CAMERA, **dated, **digest}
    assert set(arch.metadata("plain.jpg")) == {"FileModified", "SourceSHA256"}
    assert shard["metadata"] == {"images": 1, "bytes": sum(
        len(dumps(arch.metadata(k)).encode()) for k in ("camera.jpg", "plain.jpg"))}
    assert (arch.info("camera.jpg").width, arch.info("camera.jpg").height) == (48, 64)
    arch, shard = _archived(photos, str(tmp_path / "n.zarr"), codec, "no-gps")
    assert arch.metadata("camera.jpg") == {**apply_policy(CAMERA, "no-gps"), **dated, **digest}
    arch, shard = _archived(photos, str(tmp_path / "0.zarr"), codec, "none")
    # no capture metadata, no file time; the digest only (it says nothing about the photo)
    assert arch.metadata("camera.jpg") == digest and shard["metadata"]["images"] == 0


def _app():
    from jobs.cli import app
    from jobs.ray_cli import register

    register(app)
    return app


@pytest.mark.timeout(120)
def test_cli_get_writes_the_metadata(photos: Path, tmp_path: Path, codec: CDCCodec,
                                     weights_file: str):
    os.utime(photos / "camera.jpg", (1_600_000_000, 1_600_000_000))
    arch, _ = _archived(photos, str(tmp_path / "g.zarr"), codec)
    runner, app = CliRunner(), _app()
    base = ["--tier", "preview", "--model", weights_file, "--no-cache"]
    for name, fmt in (("o.png", "PNG"), ("o.jpg", "JPEG"), ("o.webp", "WEBP")):
        r = runner.invoke(app, ["get", arch.url, "camera.jpg", str(tmp_path / name), *base])
        assert r.exit_code == 0, r.output
        out = Image.open(tmp_path / name)
        assert out.format == fmt and read_metadata(out) == CAMERA and out.size == (48, 64)
        assert (tmp_path / name).stat().st_mtime == 1_600_000_000  # dated as its source
    r = runner.invoke(app, ["get", arch.url, "camera.jpg", str(tmp_path / "g.png"), *base,
                            "--metadata", "no-gps"])
    assert r.exit_code == 0 and read_metadata(Image.open(tmp_path / "g.png")) == apply_policy(
        CAMERA, "no-gps")
    r = runner.invoke(app, ["get", arch.url, "camera.jpg", str(tmp_path / "n.png"), *base,
                            "--metadata", "none"])
    assert r.exit_code == 0 and read_metadata(Image.open(tmp_path / "n.png")) == {}
    r = runner.invoke(app, ["get", arch.url, "camera.jpg", str(tmp_path / "x.png"), *base,
                            "--metadata", "strip"])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "error: --metadata: 'strip' is not one of keep, no-gps, none"]
    # a hostile archive: metadata a writer never writes, under a matching digest
    meta_file = tmp_path / "g.zarr" / "meta" / "00000000.json"
    blob = json.dumps({"shard": 0, "records": {"camera.jpg": {"Orientation": 8}}}).encode()
    meta_file.write_bytes(blob)
    manifest = tmp_path / "g.zarr" / "manifest" / "00000000.json"
    m = json.loads(manifest.read_text())
    m["meta_digest"] = "sha256:" + hashlib.sha256(blob).hexdigest()
    manifest.write_text(json.dumps(m))
    r = runner.invoke(app, ["get", arch.url, "camera.jpg", str(tmp_path / "h.png"), *base])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "unknown tag 'Orientation'" in lines[0]
    assert "--metadata none" in lines[0] and not (tmp_path / "h.png").exists()
    r = runner.invoke(app, ["get", arch.url, "camera.jpg", str(tmp_path / "h.png"), *base,
                            "--metadata", "none"])
    assert r.exit_code == 0 and (tmp_path / "h.png").exists()


def test_stored_metadata_skips_formats_without_exif(tmp_path: Path):
    arch = _archive(tmp_path)
    arch.write_shard(0, [Record("a", b"xx", 2, 2, meta=CAMERA)])
    assert embed(b"BMdata", "BMP", stored_metadata(arch, "a")) == b"BMdata"
    png = io.BytesIO()
    Image.new("RGB", (3, 3)).save(png, "PNG")
    out = embed(png.getvalue(), "PNG", stored_metadata(arch, "a", "no-gps"))
    assert read_metadata(Image.open(io.BytesIO(out))) == apply_policy(CAMERA, "no-gps")


# -- XMP: the photographer's curation ---------------------------------------------------------
def _xmp(description_attrs: str = "", body: str = "", head: str = "") -> bytes:
    return (f'{head}<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
            'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
            'rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/" '
            f'{description_attrs}>{body}</rdf:Description></rdf:RDF></x:xmpmeta>'
            '<?xpacket end="w"?>').encode()


LIGHTROOM = _xmp('xmp:Rating="4" xmp:Label="Red" crs:Exposure2012="+0.35"',
                 '<dc:title><rdf:Alt><rdf:li xml:lang="de">See</rdf:li>'
                 '<rdf:li xml:lang="x-default">Lake &amp; hills</rdf:li></rdf:Alt></dc:title>'
                 '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Evening,\n west shore'
                 '</rdf:li></rdf:Alt></dc:description>'
                 '<dc:subject><rdf:Bag><rdf:li>holiday</rdf:li><rdf:li>Norway</rdf:li>'
                 '<rdf:li>holiday</rdf:li></rdf:Bag></dc:subject>')
CURATION = {"XmpRating": 4, "XmpLabel": "Red", "XmpTitle": "Lake & hills",
            "XmpDescription": "Evening, west shore", "XmpKeywords": ["holiday", "Norway"]}


def _jpeg_bytes(exif: bytes = b"", xmp: bytes = b"") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(smooth_image(24, 32, 0)).save(buf, "JPEG", exif=exif, xmp=xmp)
    return buf.getvalue()


def test_xmp_curation_is_read_beside_exif():
    img = decode_image(_jpeg_bytes(_camera_exif().tobytes(), LIGHTROOM), "lr.jpg")
    assert input_metadata(img) == {**CAMERA, **CURATION}  # not the raw-development settings
    check_metadata(input_metadata(img), "x")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_xmp_curation_is_written_back(fmt: str):
    buf = io.BytesIO()
    Image.fromarray(smooth_image(20, 28, 1)).save(buf, fmt)
    out = embed(buf.getvalue(), fmt, {**CAMERA, **CURATION})
    assert read_metadata(Image.open(io.BytesIO(out))) == {**CAMERA, **CURATION}
    only = embed(buf.getvalue(), fmt, {"XmpRating": 5})  # XMP alone, no EXIF block
    assert read_metadata(Image.open(io.BytesIO(only))) == {"XmpRating": 5}


@pytest.mark.parametrize("packet", [
    _xmp('xmp:Rating="4"', head='<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'),  # entities
    _xmp('xmp:Rating="4"', "<dc:title>" + "x" * 300_000 + "</dc:title>"),  # over 256 KiB
    _xmp('xmp:Rating="4"', "<dc:title>"),  # not well-formed
    _xmp('xmp:Rating="9"'),  # out of range
])
def test_hostile_or_broken_xmp_is_ignored(packet: bytes):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()  # a PNG's iTXt carries any size (a JPEG segment stops at 64 KiB)
    info.add_itxt("XML:com.adobe.xmp", packet.decode())
    buf = io.BytesIO()
    Image.fromarray(smooth_image(24, 32, 0)).save(buf, "PNG", pnginfo=info)
    img = decode_image(buf.getvalue(), "x.png")
    assert input_metadata(img) == {} and img.size == (32, 24)


def test_xmp_within_the_bound():
    many = "".join(f"<rdf:li>keyword number {i:03d}</rdf:li>" for i in range(300))
    big = _xmp('xmp:Rating="3"', f"<dc:subject><rdf:Bag>{many}</rdf:Bag></dc:subject>")
    meta = input_metadata(decode_image(_jpeg_bytes(xmp=big), "k.jpg"))
    assert meta["XmpRating"] == 3 and len(meta["XmpKeywords"]) == 64  # the first 64
    huge = "".join(f"<rdf:li>{'k' * 120}{i:03d}</rdf:li>" for i in range(64))
    meta = input_metadata(decode_image(_jpeg_bytes(_camera_exif().tobytes(), _xmp(
        'xmp:Rating="3"', f"<dc:subject><rdf:Bag>{huge}</rdf:Bag></dc:subject>")), "h.jpg"))
    assert meta == {**CAMERA, "XmpRating": 3}  # keywords past 4 KiB left out, the rest kept
    for bad in ({"XmpRating": 6}, {"XmpKeywords": []}, {"XmpKeywords": ["a\nb"]},
                {"XmpTitle": 3}, {"XmpKeywords": ["k"] * 65}):
        with pytest.raises(MetadataError, match="bad value"):
            check_metadata(bad, "x")
