"""docs/codec.md, "Adding a codec", walked through with a toy codec (issue 25).

The toy (:mod:`tests.toy_codec`: 4 bits per channel through a per-channel codebook, zlib,
the toolkit's container, its own weights file) is registered with
:func:`cdc.registry.register` for this module only, and every other part of the toolkit
takes it as it is: the codec contract runs against it, the zoo loads its weights (bytes
and path), ``cdc compress`` / ``decompress`` / ``info`` / ``train`` handle it, and an
archive is written and read through the pipeline. No file outside ``tests/toy_codec/`` and
this test names it: a new codec needs its package, its registration and its test.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_codec_contract import CodecContract
from test_codec_contract import test_every_registered_codec_has_a_contract as every_codec_covered
from typer.testing import CliRunner

from cdc import registry
from cdc.bitstream import CODEC_IDS, read_header
from tests.conftest import smooth_image
from tests.toy_codec import ENTRY, ToyCodec, toy_weights

REPO = Path(__file__).resolve().parents[1]
TOY_PACKAGE = REPO / "tests" / "toy_codec"


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    """The registration (docs/codec.md step 5), for this module only: other modules'
    tests (``test_every_registered_codec_has_a_contract`` among them) never see it."""
    registry.register(ENTRY)
    yield ENTRY
    registry.unregister(ENTRY.name)


class TestToyContract(CodecContract):
    """Step 6: the contract, from nothing but a tiny weights file."""

    codec_name = "toy"

    @classmethod
    def make_weights(cls, seed):
        return toy_weights(seed)

    def test_the_codebook_reconstructs_within_half_a_step(self, codec, images, streams):
        for img, data in zip(images, streams):
            out = np.asarray(codec.decompress(data)).astype(int)
            assert np.abs(out - img.astype(int)).max() <= 9  # 255 / 15 / 2 = 8.5


# -- the registration ---------------------------------------------------------------------
def test_register_is_seen_by_every_reader_of_the_table(toy_registered):
    assert registry.entry("toy") is toy_registered
    assert CODEC_IDS["toy"] == 0xF0 and registry.BY_BYTE[0xF0] == "toy"
    assert registry.codec_class("toy") is ToyCodec
    assert registry.model_preset("toy-4bit").name == "toy-4bit"
    every_codec_covered()  # the toy counts: TestToyContract is a CodecContract


def test_register_refuses_a_taken_name_or_byte_and_unregister_undoes_it():
    from dataclasses import replace

    with pytest.raises(ValueError, match="already registered"):
        registry.register(ENTRY)
    with pytest.raises(ValueError, match="taken by 'cdc'"):
        registry.register(replace(ENTRY, name="toy2", byte=0))
    with pytest.raises(ValueError, match="0..255"):
        registry.register(replace(ENTRY, name="toy2", byte=256))
    registry.register(replace(ENTRY, name="toy2", byte=0xF1))
    assert registry.unregister("toy2").byte == 0xF1
    assert "toy2" not in registry.CODECS and 0xF1 not in registry.BY_BYTE
    assert "toy2" not in CODEC_IDS


# -- the zoo, the CLI, the archive --------------------------------------------------------
def test_the_zoo_loads_its_weights_from_bytes_and_a_path(tmp_path):
    from zoo import codec_from_bytes, load_codec

    data = toy_weights(0)
    path = tmp_path / "toy.pt"
    path.write_bytes(data)
    a, b = codec_from_bytes(data, "test"), load_codec(str(path))
    assert isinstance(a, ToyCodec) and isinstance(b, ToyCodec)
    assert a.weights_sha256 == b.weights_sha256 and np.array_equal(a.levels, b.levels)
    img = smooth_image(33, 47, seed=4)
    assert a.decompress(b.compress(img)).size == (47, 33)


def test_cli_compress_decompress_info_and_train(tmp_path):
    from jobs.cli import app

    runner = CliRunner()
    w, src = tmp_path / "toy.pt", tmp_path / "in.png"
    w.write_bytes(toy_weights(0))
    img = smooth_image(40, 56, seed=5)
    Image.fromarray(img).save(src)
    stream, out = tmp_path / "a.cdc", tmp_path / "out.png"
    r = runner.invoke(app, ["compress", str(src), str(stream), "--model", str(w)])
    assert r.exit_code == 0, r.output
    assert read_header(stream.read_bytes()).codec == "toy"
    r = runner.invoke(app, ["decompress", str(stream), str(out), "--model", str(w)])
    assert r.exit_code == 0, r.output
    got = np.asarray(Image.open(out)).astype(int)
    assert got.shape == img.shape and np.abs(got - img.astype(int)).max() <= 9
    r = runner.invoke(app, ["info", str(stream), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert (info["codec"], info["width"], set(info["sections"])) == ("toy", 56, {"Q"})
    cfg = tmp_path / "toy.yaml"  # no trainer registered: one line, no traceback
    cfg.write_text("codec: toy\nmodel_id: toy-4bit\n")
    r = runner.invoke(app, ["train", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert r.exit_code != 0 and "has no trainer" in r.output and "Traceback" not in r.output


def test_archive_round_trip_through_the_pipeline(tmp_path):
    from pipeline.archive import encode_shard, open_or_create, plan_inputs, plan_shards
    from pipeline.archive.record_reader import Reader
    from storage import Archive
    from zoo import codec_from_bytes

    root = tmp_path / "imgs"
    root.mkdir()
    images = {f"{i}.png": smooth_image(h, w, seed=i)
              for i, (h, w) in enumerate(((48, 64), (31, 45), (48, 64)))}
    for key, img in images.items():
        Image.fromarray(img).save(root / key)
    codec = codec_from_bytes(toy_weights(0), "test")
    arch, created = open_or_create(str(tmp_path / "toy.zarr"), codec, shard_size=8)
    assert created
    items, problems = plan_inputs(str(root))
    assert not problems
    list(encode_shard(codec, arch, plan_shards(items, set(), set(), 8)[0]))
    arch = Archive.open(arch.url)
    reader = Reader(arch, codec, cache=None, archive_cache=False)
    for key, img in images.items():
        data = arch[key].data
        assert read_header(data).codec == "toy"
        for tier in arch.tiers:
            got = np.asarray(Image.open(io.BytesIO(reader.get(key, tier).data)))
            assert np.array_equal(got, np.asarray(codec.decompress(data)))
            assert np.abs(got.astype(int) - img.astype(int)).max() <= 9


# -- nothing else names it ----------------------------------------------------------------
def test_no_file_outside_its_package_and_this_test_names_the_toy():
    """The claim docs/codec.md makes: the package, the registration (here, in this test)
    and the test; no toolkit file learned about the codec."""
    here = Path(__file__).resolve()
    found = []
    for layer in ("cdc", "zoo", "storage", "pipeline", "jobs", "tests"):
        for p in sorted((REPO / layer).rglob("*.py")):
            if p == here or p.is_relative_to(TOY_PACKAGE) or "__pycache__" in p.parts:
                continue
            text = p.read_text()
            if "toy_codec" in text or "ToyCodec" in text or '"toy-4bit"' in text:
                found.append(str(p.relative_to(REPO)))
    assert not found, found
