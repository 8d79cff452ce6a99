"""Bad input and honest output: the pixel limit, EXIF orientation, animated and 16-bit
inputs, output permissions, escaped names, key rules, `cdc verify`, `cdc export`'s
counts and `cdc serve`'s early archive check. No Ray is started here."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cdc import CDCCodec, describe
from cdc.image import SourceMode, to_rgb_array
from jobs.cli import app
from jobs.text import error_line, one_line, printable
from pipeline.archive import (
    InputItem,
    encode_shard,
    load_item,
    open_or_create,
    plan_inputs,
    plan_shards,
)
from pipeline.files import (
    DEFAULT_MAX_PIXELS,
    InputError,
    read_image,
    save_image_atomic,
    write_bytes_atomic,
)
from storage import Archive, BadKeyError, CorruptArchiveError, Record, check_key, key_problem
from storage.check import check_archive
from storage.keys import bad_keys, key_problems
from tests.conftest import smooth_image

runner = CliRunner()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def header_only_png(path: Path, w: int, h: int) -> Path:
    """A PNG whose header says w x h grayscale but holds (almost) no pixels: decoding it
    would fail, so a refusal naming the limit proves the size was checked first."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                     + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b""))
    return path


@pytest.fixture
def png(tmp_path: Path) -> Path:
    p = tmp_path / "in.png"
    Image.fromarray(smooth_image(40, 56)).save(p)
    return p


def _lines(text: str) -> list[str]:
    return [ln for ln in text.strip().splitlines() if ln.strip()]


# -- large images --------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_large_image_refused_from_its_header(tmp_path: Path, weights_file: str):
    big = header_only_png(tmp_path / "big.png", 12000, 12000)  # 144 MP grayscale
    dst = tmp_path / "big.cdc"
    r = runner.invoke(app, ["compress", str(big), str(dst), "--model", weights_file])
    lines = _lines(r.stderr)
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0] == (f"error: {big}: 12000x12000 image (144.0 MP) is over the "
                        f"{DEFAULT_MAX_PIXELS} pixel limit (--max-pixels)")
    assert "Traceback" not in r.output and not dst.exists()
    assert list(tmp_path.glob(".big.cdc*")) == []

    # `cdc archive` stores it as a failed record with the same message (the stage the
    # encoder actors run; they set the process limit from --max-pixels)
    loaded = load_item(InputItem("big.png", str(big)))
    assert loaded.image is None and f"error: {loaded.error}" == lines[0]

    # an image over Pillow's own bomb limit is refused the same way, naming the limit
    bomb = header_only_png(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(InputError, match=r"bomb\.png: image is over the \d+ pixel limit"):
        read_image(bomb)


@pytest.mark.timeout(120)
def test_max_pixels_option_and_per_call_limit(png: Path, tmp_path: Path, weights_file: str):
    dst = tmp_path / "a.cdc"
    r = runner.invoke(app, ["compress", str(png), str(dst), "--model", weights_file,
                            "--max-pixels", "1000"])
    assert r.exit_code == 1 and "over the 1000 pixel limit" in r.stderr and not dst.exists()
    r = runner.invoke(app, ["compress", str(png), str(dst), "--model", weights_file,
                            "--max-pixels", "0"])
    assert r.exit_code == 2 and not dst.exists()
    with pytest.raises(InputError, match="over the 2000 pixel limit"):
        read_image(png, max_pixels=2000)
    # The limit is a parameter of each read (a job passes its own), not process state.
    assert "over the 2000 pixel limit" in load_item(InputItem("in.png", str(png)),
                                                    max_pixels=2000).error
    assert load_item(InputItem("in.png", str(png))).error == ""
    import pipeline.files

    assert not hasattr(pipeline.files, "set_max_pixels")


@pytest.mark.timeout(120)
def test_archive_stage_records_oversized_image_as_failed(png: Path, tmp_path: Path,
                                                         codec: CDCCodec):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(smooth_image(40, 56)).save(src / "ok.png")
    header_only_png(src / "big.png", 12000, 12000)
    items, _ = plan_inputs(str(src))
    arch, _ = open_or_create(str(tmp_path / "a.zarr"), codec, shard_size=4)
    (final,) = [e for e in encode_shard(codec, arch, plan_shards(items, set(), set(), 4)[0])
                if e["type"] == "shard"]
    assert (final["ok"], final["failed"]) == (1, 1)
    (failed,) = Archive.open(arch.url).failed()
    assert failed.key == "big.png"
    assert failed.error == (f"{src / 'big.png'}: 12000x12000 image (144.0 MP) is over the "
                            f"{DEFAULT_MAX_PIXELS} pixel limit (--max-pixels)")


@pytest.mark.timeout(120)
def test_runtime_errors_are_one_line(png: Path, tmp_path: Path, weights_file: str,
                                     monkeypatch):
    from cdc import CDCCodec as Codec

    # a bad model is reported once (typer.Exit is a RuntimeError: not re-reported)
    r = runner.invoke(app, ["compress", str(png), str(tmp_path / "a.cdc"), "--model",
                            str(tmp_path / "no.pt")])
    assert r.exit_code == 1 and len(_lines(r.stderr)) == 1 and "no.pt" in r.stderr, r.output

    def oom(self, img):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory\nmore details")

    monkeypatch.setattr(Codec, "compress", oom)
    dst = tmp_path / "b.cdc"
    r = runner.invoke(app, ["compress", str(png), str(dst), "--model", weights_file])
    (line,) = _lines(r.stderr)
    assert r.exit_code == 1 and not dst.exists(), r.output
    assert line.startswith(f"error: {png}: encoding failed (RuntimeError: ") and "allocate" in line
    assert "Traceback" not in r.output


# -- what reading does to the image --------------------------------------------------------
def _exif_jpeg(path: Path, orientation: int) -> Path:
    img = Image.fromarray(smooth_image(64, 96))  # stored 96 wide, 64 high
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.timeout(120)
def test_exif_orientation_is_applied(tmp_path: Path, weights_file: str):
    jpg = _exif_jpeg(tmp_path / "rot.jpg", 6)  # "rotate 90 CW to display"
    assert Image.open(jpg).size == (96, 64)
    assert read_image(jpg).size == (64, 96)
    assert load_item(InputItem("rot.jpg", str(jpg))).width == 64
    stream = tmp_path / "rot.cdc"
    r = runner.invoke(app, ["compress", str(jpg), str(stream), "--model", weights_file])
    assert r.exit_code == 0, r.output
    d = describe(stream.read_bytes())
    assert (d["width"], d["height"]) == (64, 96)


def _animated(path: Path, fmt: str, n: int = 3) -> Path:
    frames = [Image.fromarray(smooth_image(40, 56, seed=i)) for i in range(n)]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:])
    return path


@pytest.mark.timeout(120)
def test_animated_input_keeps_first_frame_and_says_so(tmp_path: Path, weights_file: str):
    gif = _animated(tmp_path / "anim.gif", "GIF")
    stream = tmp_path / "anim.cdc"
    r = runner.invoke(app, ["compress", str(gif), str(stream), "--model", weights_file])
    assert r.exit_code == 0, r.output
    assert _lines(r.stderr) == [
        f"warning: {gif}: GIF with 3 frames: only the first frame is coded"]
    assert "(GIF with 3 frames: only the first frame is coded)" in r.stdout
    for fmt, ext in (("PNG", "png"), ("WEBP", "webp")):  # APNG, animated WebP
        p = _animated(tmp_path / f"anim.{ext}", fmt)
        ld = load_item(InputItem(f"anim.{ext}", str(p)))
        assert ld.error == "" and (ld.width, ld.height) == (56, 40)
        assert ld.note == f"{fmt} with 3 frames: only the first frame is coded"
    # An encoded shard reports its notes by key (read off each image, no shared buffer).
    from pipeline.archive import encode_shard, open_or_create, plan_inputs, plan_shards
    from zoo import load_codec

    codec = load_codec(weights_file)
    arch, _ = open_or_create(str(tmp_path / "a.zarr"), codec, shard_size=8)
    items, _ = plan_inputs(str(tmp_path / "anim.*"))
    plan = plan_shards(items, set(), set(), 8)[0]
    shard = [ev for ev in encode_shard(codec, arch, plan) if ev["type"] == "shard"][-1]
    keys = sorted(n["key"] for n in shard["notes"])
    assert keys == ["anim.gif", "anim.png", "anim.webp"], shard["notes"]
    png = tmp_path / "still.png"
    Image.fromarray(smooth_image(40, 56)).save(png)
    r = runner.invoke(app, ["compress", str(png), str(tmp_path / "s.cdc"), "--model",
                            weights_file])
    assert r.exit_code == 0 and r.stderr.strip() == "" and "frames" not in r.stdout


def test_the_stream_records_a_dropped_animation(tmp_path: Path, weights_file: str):
    """A multi-frame input sets the stream's first-frame flag (bit 7): `cdc info` says so,
    for CDC and DiffC, and the stream still decodes; a still image leaves it clear."""
    import json

    from cdc.bitstream import FLAG_FIRST_FRAME, read_header
    from pipeline.files import decode_image
    from tests.test_diffc import make_diffc_weights
    from zoo import codec_from_bytes, load_codec

    gif = _animated(tmp_path / "anim.gif", "GIF")
    stream = tmp_path / "anim.cdc"
    assert runner.invoke(app, ["compress", str(gif), str(stream), "-m", weights_file]
                         ).exit_code == 0
    assert read_header(stream.read_bytes()).flags & FLAG_FIRST_FRAME
    r = runner.invoke(app, ["info", str(stream), "--json"])
    assert r.exit_code == 0 and "first frame of a multi-frame input" in json.loads(
        r.stdout)["source"]
    assert load_codec(weights_file).decompress(stream.read_bytes()).size == (56, 40)
    diffc = codec_from_bytes(make_diffc_weights(0), "t")
    img = decode_image(gif.read_bytes(), str(gif))
    data = diffc.compress(img)
    assert read_header(data).first_frame and diffc.decompress(data).size == (56, 40)
    still = diffc.compress(np.asarray(img.convert("RGB")))
    assert not read_header(still).first_frame


def _png16(path: Path, channels: int) -> Path:
    import imagecodecs

    rng = np.random.default_rng(0)
    shape = (24, 32, channels) if channels > 1 else (24, 32)
    path.write_bytes(imagecodecs.png_encode(rng.integers(0, 65535, shape).astype(np.uint16)))
    return path


@pytest.mark.timeout(120)
def test_16bit_rgb_png_is_recorded_as_reduced(tmp_path: Path, weights_file: str):
    rgb16 = _png16(tmp_path / "rgb16.png", 3)
    # Pillow opens it as 8-bit "RGB" (high bytes only); the raw mode tells
    assert Image.open(rgb16).mode == "RGB"
    assert to_rgb_array(Image.open(rgb16))[1] == SourceMode.REDUCED_16BIT
    assert to_rgb_array(read_image(rgb16))[1] == SourceMode.REDUCED_16BIT  # loaded first
    assert to_rgb_array(read_image(_png16(tmp_path / "l16.png", 1)))[1] == SourceMode.REDUCED_16BIT
    png8 = tmp_path / "rgb8.png"
    Image.fromarray(smooth_image(24, 32)).save(png8)
    assert to_rgb_array(read_image(png8))[1] == SourceMode.RGB
    stream = tmp_path / "rgb16.cdc"
    r = runner.invoke(app, ["compress", str(rgb16), str(stream), "--model", weights_file])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(stream), "--json"])
    assert json.loads(r.stdout)["source"] == SourceMode.REDUCED_16BIT.note


# -- output permissions --------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_honour_the_umask(tmp_path: Path, umask: int):
    old = os.umask(umask)
    try:
        out = tmp_path / f"f{umask:o}.bin"
        write_bytes_atomic(out, b"data")
        assert out.stat().st_mode & 0o777 == 0o666 & ~umask
        img = tmp_path / f"i{umask:o}.png"
        save_image_atomic(Image.fromarray(smooth_image(8, 8)), img)
        assert img.stat().st_mode & 0o777 == 0o666 & ~umask
        write_bytes_atomic(out, b"again")  # replacing: a fresh file, same rule
        assert out.read_bytes() == b"again" and out.stat().st_mode & 0o777 == 0o666 & ~umask
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    finally:
        os.umask(old)


@pytest.mark.timeout(120)
def test_compress_output_mode(png: Path, tmp_path: Path, weights_file: str):
    old = os.umask(0o022)
    try:
        stream = tmp_path / "a.cdc"
        assert runner.invoke(app, ["compress", str(png), str(stream), "--model",
                                   weights_file]).exit_code == 0
        assert stream.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


# -- names printed escaped -----------------------------------------------------------------
def test_printable_escapes_controls_escapes_and_bidi():
    assert printable("plain/ünïcode name.png") == "plain/ünïcode name.png"
    assert printable("a\nb") == "a\\nb"
    assert printable("\x1b[2Khidden") == "\\x1b[2Khidden"
    assert printable("abc\u202egpj.exe") == "abc\\u202egpj.exe"
    for ch in "\u200e\u200f\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200b\x7f\x85":
        want = f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
        assert printable(ch) == want, ch
    assert printable("x\udcff") == "x\\udcff"  # an undecodable byte (surrogateescape)
    assert one_line("first\nsecond") == "first …"
    assert error_line("/d/a\nb.png: not an image\ntrace", "/d/a\nb.png") == (
        "/d/a\\nb.png: not an image …")


@pytest.mark.timeout(120)
def test_error_lines_escape_file_names(tmp_path: Path, weights_file: str):
    for name in ("a\nb.png", "\x1b[8mhidden.png", "abc\u202egnp.exe"):
        src = tmp_path / name
        src.write_bytes(b"not an image")
        r = runner.invoke(app, ["compress", str(src), str(tmp_path / "o.cdc"), "--model",
                                weights_file])
        lines = _lines(r.stderr)
        assert r.exit_code == 1 and len(lines) == 1, r.output
        assert lines[0] == f"error: {printable(src)}: not an image file (unrecognised format)"
        assert all(ch.isprintable() for ch in lines[0])


# -- keys ----------------------------------------------------------------------------------
def test_keys_with_bidi_and_format_controls_are_refused():
    for key in ("abc\u202egnp.png", "a\u2066b.png", "a\u200eb", "zero\u200bwidth.png",
                "bom\ufeff.png"):
        assert "control character" in key_problem(key), key
        with pytest.raises(BadKeyError):
            check_key(key)
    assert "RIGHT-TO-LEFT OVERRIDE" in key_problem("x\u202e")
    assert key_problem("ünïcode/名前.png") is None
    keys = ["ok.png", "a\u202eb.png", "c\nd.png"]
    assert [k for k, _ in bad_keys(keys)] == ["a\u202eb.png", "c\nd.png"]
    assert key_problems(["a\u202eb.png"], "u: shard 0") == [
        "u: shard 0: bad key 'a\\u202eb.png': key contains the control character U+202E "
        "(RIGHT-TO-LEFT OVERRIDE)"]


@pytest.mark.timeout(120)
def test_plan_inputs_refuses_bidi_file_names(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for n in ("ok.png", "abc\u202egnp.png"):
        Image.fromarray(smooth_image(8, 8)).save(src / n, "PNG")
    items, problems = plan_inputs(str(src))
    assert [i.key for i in items] == ["ok.png"]
    assert [p["key"] for p in problems] == ["abc\u202egnp.png"]


# -- cdc verify ----------------------------------------------------------------------------
def _small_archive(tmp_path: Path, codec: CDCCodec, name: str = "a.zarr",
                   keys=("a.png", "b.png", "c.png")) -> Archive:
    arch, _ = open_or_create(str(tmp_path / name), codec, shard_size=2)
    recs = [Record(key=k, data=codec.compress(Image.fromarray(smooth_image(24, 32, i))),
                   height=24, width=32) for i, k in enumerate(keys)]
    arch.write_shard(0, recs[:2])
    arch.write_shard(1, recs[2:])
    return Archive.open(arch.url)


@pytest.mark.timeout(120)
def test_verify_clean_and_corrupt_archives(tmp_path: Path, codec: CDCCodec):
    arch = _small_archive(tmp_path, codec)
    r = runner.invoke(app, ["verify", arch.url])
    assert r.exit_code == 0, r.output
    assert "verdict: clean" in r.stdout and "records: 3 (3 ok, 0 failed images)" in r.stdout
    rep = json.loads(runner.invoke(app, ["verify", arch.url, "--json"]).stdout)
    assert rep["clean"] and rep["shards"] == 2 and rep["records"] == 3 and rep["problems"] == 0

    # flip one byte of the first record's payload (shard 0, offset 0)
    obj = sorted(p for p in (Path(arch.url) / "bitstream").rglob("*") if p.is_file()
                 and p.name != "zarr.json")[0]
    raw = bytearray(obj.read_bytes())
    raw[0] ^= 0xFF
    obj.write_bytes(bytes(raw))
    r = runner.invoke(app, ["verify", arch.url])
    assert r.exit_code == 3, r.output
    assert "bad payloads: 1" in r.stdout and "bad manifests: 0" in r.stdout
    assert "verdict: 1 problem(s)" in r.stdout
    (line,) = _lines(r.stderr)
    assert line.startswith("error: ") and "'a.png'" in line and "CRC-32" in line
    rep = check_archive(Archive.open(arch.url))
    assert [p["key"] for p in rep["bad_payloads"]] == ["a.png"] and not rep["clean"]
    # --no-data reads no payload: the metadata is fine
    assert runner.invoke(app, ["verify", arch.url, "--no-data"]).exit_code == 0

    # a manifest that does not match the shard's metadata
    other = _small_archive(tmp_path, codec, "m.zarr")
    man = Path(other.url) / "manifest" / "00000001.json"
    m = json.loads(man.read_text())
    m["digest"] = "sha256:" + "0" * 64
    man.write_text(json.dumps(m))
    r = runner.invoke(app, ["verify", other.url, "--json"])
    assert r.exit_code == 3
    rep = json.loads(r.stdout)
    assert [p["shard"] for p in rep["bad_manifests"]] == [1] and rep["bad_payloads"] == []


@pytest.mark.timeout(120)
def test_verify_refuses_a_non_archive(tmp_path: Path):
    for url in (tmp_path / "nothing", tmp_path):
        r = runner.invoke(app, ["verify", str(url)])
        lines = _lines(r.stderr)
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {url}")
        assert r.stdout == ""


@pytest.fixture
def bad_key_archive(tmp_path: Path, codec: CDCCodec, monkeypatch) -> Archive:
    """An archive holding a key with U+202E, written below check_key (as other software or
    an older version might have)."""
    import storage.writer

    with monkeypatch.context() as m:
        m.setattr(storage.writer, "check_key", lambda key, where="": key)
        arch = _small_archive(tmp_path, codec, "k.zarr", ("a.png", "abc\u202egnp.png", "c.png"))
    return arch


@pytest.mark.timeout(120)
def test_verify_flags_bad_keys(bad_key_archive: Archive):
    assert "abc\u202egnp.png" in bad_key_archive.keys()
    rep = check_archive(bad_key_archive)
    assert [(p["shard"], p["key"]) for p in rep["bad_keys"]] == [(0, "abc\u202egnp.png")]
    assert not rep["clean"]
    r = runner.invoke(app, ["verify", bad_key_archive.url])
    assert r.exit_code == 3 and "bad keys: 1" in r.stdout and "bad payloads: 0" in r.stdout
    (line,) = _lines(r.stderr)
    assert "bad key 'abc\\u202egnp.png'" in line and "U+202E" in line
    assert all(ln.isprintable() for ln in r.output.splitlines())


@pytest.mark.timeout(120)
def test_archive_verify_flags_bad_keys(bad_key_archive: Archive):
    with pytest.raises(CorruptArchiveError, match=r"bad key 'abc\\u202egnp\.png'"):
        bad_key_archive.verify()


# -- cdc export's counts, cdc serve's early check ------------------------------------------
@pytest.mark.timeout(120)
def test_export_summary_counts_each_key_once(tmp_path: Path, codec: CDCCodec,
                                             weights_file: str, monkeypatch):
    """3 keys asked for: 1 exported, 1 failing to decode (its payload is damaged), 1 missing.
    The decode failure must not be counted twice ("selected 4").

    No Ray: the real Exporter actor's code runs in this process (its class under Ray's
    wrapper) and the real driver loop feeds its events to the counters, so every count in
    the summary comes from the code that counts in a real run. Only the session, the
    actor layout and ``ray.wait``/``ray.get`` are stood in for."""
    import contextlib
    import types

    import ray

    import jobs.driver
    import jobs.export as ex

    arch = _small_archive(tmp_path, codec)  # a.png, b.png in shard 0; c.png in shard 1
    obj = sorted(p for p in (Path(arch.url) / "bitstream").rglob("*") if p.is_file()
                 and p.name != "zarr.json")[0]
    raw = bytearray(obj.read_bytes())
    infos = {i.key: i for i in arch.infos()}
    assert (infos["a.png"].row, infos["b.png"].row) == (0, 1)
    raw[infos["a.png"].nbytes + 30] ^= 0xFF  # inside b.png's payload (after a.png's)
    obj.write_bytes(bytes(raw))

    class Session:
        mode, gpus = "fake", 0

    created = []
    body_class = ex.Exporter.__ray_actor_class__  # the class under Ray's actor wrapper

    class InProcess:
        """``Exporter.options(...).remote(...)`` → the real actor body, here; its
        ``export.remote`` returns the real (generator) method's iterator."""

        @staticmethod
        def options(**kw):
            return InProcess

        @staticmethod
        def remote(*args):
            body = body_class(*args)
            created.append(body)
            return types.SimpleNamespace(
                export=types.SimpleNamespace(remote=lambda chunk, w: iter(body.export(chunk, w))))

    class FakeRay:
        exceptions = ray.exceptions

        @staticmethod
        def wait(gens, num_returns, timeout):
            return gens[:1], gens[1:]

        @staticmethod
        def get(item):
            return item

    monkeypatch.setattr(ex, "ray_session", lambda *a, **k: contextlib.nullcontext(Session()))
    monkeypatch.setattr(ex, "actor_layout", lambda *a, **k: (1, 1.0, 0))
    monkeypatch.setattr(ex, "check_fits", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(ex, "Exporter", InProcess)
    monkeypatch.setattr(ex, "weights_ref", lambda m: None)
    monkeypatch.setattr(ray, "kill", lambda a: None)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: types.SimpleNamespace(get_node_id=lambda: "node-1"))
    monkeypatch.setattr(jobs.driver, "ray", FakeRay)
    dest = tmp_path / "out"
    s = ex.run_export_job(ex.ExportJobConfig(url=arch.url, dest=str(dest),
                                             model=weights_file, keys=["a.png", "b.png", "zz.png"],
                                             cache=False, progress=False))
    assert len(created) == 1
    assert s["selected"] == 3 and s["exported"] == 1 and s["skipped_existing"] == 0
    assert sorted(f["key"] for f in s["failures"]) == ["b.png", "zz.png"] and not s["complete"]
    assert sorted(p.name for p in dest.iterdir()) == ["a.png"]
    assert s["bytes_out"] == (dest / "a.png").stat().st_size
    assert s["ray"]["nodes_used"] == 1
    assert dict(ex.summary_rows(s))["selected"] == "3"
    assert dict(ex.summary_rows(s))["failures"] == "2"


@pytest.mark.timeout(120)
def test_serve_checks_the_archive_before_starting_ray(tmp_path: Path, codec: CDCCodec,
                                                      weights_file: str, monkeypatch):
    import jobs.cluster
    import jobs.serve

    def no_ray(*a, **k):
        raise AssertionError("Ray must not start for a bad archive")

    monkeypatch.setattr(jobs.serve, "run_server", no_ray)
    monkeypatch.setattr(jobs.cluster, "ray_session", no_ray)
    r = runner.invoke(app, ["serve", str(tmp_path / "nothing")])
    lines = _lines(r.stderr)
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0] == f"error: {tmp_path / 'nothing'}: does not exist"
    arch = _small_archive(tmp_path, codec)
    r = runner.invoke(app, ["serve", arch.url])  # a test model: not shipped, no --model
    assert r.exit_code == 1 and "not a shipped model" in r.stderr
    r = runner.invoke(app, ["serve", arch.url, "--model", weights_file, "--tier", "nope"])
    assert r.exit_code == 2 and "no tier 'nope'" in r.stderr
