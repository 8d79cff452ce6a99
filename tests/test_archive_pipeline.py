"""Archive stages without Ray: inputs and keys, shard planning, batching by size, encoding
a shard with failures, tiers, the decoded-image caches, and `cdc get`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cdc import CDCCodec, describe
from pipeline.archive import (
    EncodeOptions,
    FailedRecordError,
    InputItem,
    Reader,
    claim_is_stale,
    encode_images,
    encode_shard,
    group_batches,
    load_item,
    open_or_create,
    output_name,
    plan_inputs,
    plan_shards,
)
from pipeline.archive.decoded_lru import DiskLRU, decoded_key
from pipeline.archive.tier_settings import (
    DEFAULT_TIERS,
    TierError,
    check_tiers,
    merge_tiers,
    parse_tier_spec,
    resolve,
)
from storage import Archive, ModelMismatchError, RecordNotFoundError
from tests.conftest import smooth_image


def _png(path: Path, h: int, w: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(h, w, seed)).save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    _png(root / "a.png", 40, 56, 0)
    _png(root / "b.png", 64, 64, 1)
    _png(root / "sub" / "c.png", 70, 40, 2)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (root / "notes.txt").write_text("not an image")
    return root


# -- inputs and planning ------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_plan_inputs_keys_from_folder_glob_and_list(tree: Path, tmp_path: Path):
    items, problems = plan_inputs(str(tree))
    assert [i.key for i in items] == ["a.png", "b.png", "broken.png", "sub/c.png"]
    assert problems == []
    items, _ = plan_inputs(str(tree / "*.png"))
    assert [i.key for i in items] == ["a.png", "b.png", "broken.png"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"{tree / 'a.png'}\n# comment\n{tree / 'sub' / 'c.png'}\n")
    items, _ = plan_inputs(str(lst))
    assert [i.key for i in items] == ["a.png", "sub/c.png"]
    with pytest.raises(FileNotFoundError):
        plan_inputs(str(tmp_path / "missing"))


@pytest.mark.timeout(60)
def test_plan_shards_skips_done_keys_and_fills_gaps():
    items = [InputItem(f"k{i:02d}", f"/x/k{i:02d}") for i in range(10)]
    plans = plan_shards(items, set(), set(), 4)
    assert [(p.shard, p.keys) for p in plans] == [
        (0, ["k00", "k01", "k02", "k03"]), (1, ["k04", "k05", "k06", "k07"]), (2, ["k08", "k09"])]
    # shard 1 completed with its keys, shard 0 crashed (claim stale) -> the rest re-planned
    plans = plan_shards(items, {"k04", "k05", "k06", "k07"}, {1}, 4, stale_claims={0})
    assert [(p.shard, p.keys, p.takeover) for p in plans] == [
        (0, ["k00", "k01", "k02", "k03"], True), (2, ["k08", "k09"], False)]
    assert plan_shards(items, {i.key for i in items}, {0, 1, 2}, 4) == []


@pytest.mark.timeout(60)
def test_group_batches_by_padded_size():
    sizes = [(40, 56), (64, 64), (70, 40), (33, 60), (64, 64)]
    groups = group_batches(sizes, 64, batch_size=2)
    assert groups == [[0, 1], [3, 4], [2]]  # 64x64 padded: 0,1,3,4; 128x64: 2
    assert group_batches(sizes, 64, batch_size=8, max_batch_pixels=64 * 64) == [
        [0], [1], [3], [4], [2]
    ]


@pytest.mark.timeout(60)
def test_claim_is_stale():
    import socket

    now = time.time()
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()
    assert claim_is_stale({"host": host, "pid": int(dead), "claimed_at": at}, stale_after_s=600)
    assert not claim_is_stale({"host": host, "pid": os.getpid(), "claimed_at": at},
                              stale_after_s=600)
    assert not claim_is_stale({"host": "elsewhere", "pid": 1, "claimed_at": at}, stale_after_s=600)
    assert claim_is_stale({"host": "elsewhere", "pid": 1, "claimed_at": at}, stale_after_s=600,
                          now=now + 601)


# -- encoding -----------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_load_item_reports_bad_files(tree: Path):
    ok = load_item(InputItem("a.png", str(tree / "a.png")))
    assert ok.error == "" and (ok.width, ok.height) == (56, 40) and ok.nbytes > 0
    bad = load_item(InputItem("broken.png", str(tree / "broken.png")))
    assert bad.image is None and "broken.png" in bad.error
    gone = load_item(InputItem("gone.png", str(tree / "gone.png")), retries=3, backoff_s=5)
    assert "no such file" in gone.error  # not retried (would take 30 s)


@pytest.mark.timeout(60)
def test_encode_images_isolates_a_failing_image(codec: CDCCodec):
    class Flaky:
        """A codec whose batch call fails when the poison image is in it."""

        config = codec.config

        def compress_batch(self, images):
            if any(im.width == 13 for im in images):
                raise RuntimeError("boom")
            return codec.compress_batch(images)

        def compress(self, im):
            return self.compress_batch([im])[0]

    imgs = [Image.fromarray(smooth_image(32, 32, i)) for i in range(3)]
    imgs.insert(1, Image.fromarray(smooth_image(32, 13, 9)))  # pads to 64x64 too: same batch
    out = encode_images(Flaky(), imgs, batch_size=8)
    assert isinstance(out[0], bytes) and isinstance(out[2], bytes) and isinstance(out[3], bytes)
    assert isinstance(out[1], str) and "boom" in out[1]
    assert out[0] == codec.compress(imgs[0])


@pytest.mark.timeout(60)
def test_encode_shard_writes_ok_and_failed_records(tree: Path, tmp_path: Path, codec: CDCCodec):
    items, _ = plan_inputs(str(tree))
    arch, created = open_or_create(str(tmp_path / "a.zarr"), codec, shard_size=8)
    assert created and arch.tiers == DEFAULT_TIERS
    plan = plan_shards(items, set(), set(), 8)[0]
    events = list(encode_shard(codec, arch, plan, owner="t",
                               options=EncodeOptions(batch_size=2, window=2)))
    assert [e["type"] for e in events] == ["progress", "progress", "shard"]
    final = events[-1]
    assert (final["images"], final["ok"], final["failed"]) == (4, 3, 1)
    assert final["failures"][0]["key"] == "broken.png"
    assert sum(e["images"] for e in events[:-1]) == 4
    arch = Archive.open(arch.url)
    assert arch.keys() == ["a.png", "b.png", "broken.png", "sub/c.png"]
    (failed,) = arch.failed()
    assert failed.key == "broken.png" and "not an image" in failed.error
    rec = arch["sub/c.png"]
    assert (rec.width, rec.height) == (40, 70) and describe(rec.data)["width"] == 40
    # The same plan again is a no-op (same key list), and open_or_create re-opens.
    list(encode_shard(codec, arch, plan, owner="t2"))
    assert arch.manifest(0)["owner"] == "t"
    _, created = open_or_create(arch.url, codec)
    assert not created


@pytest.mark.timeout(60)
def test_open_or_create_refuses_other_model(tmp_path: Path, codec: CDCCodec, other_weights_file):
    open_or_create(str(tmp_path / "a.zarr"), codec)
    other = CDCCodec.from_pretrained(other_weights_file)
    with pytest.raises(ModelMismatchError):
        open_or_create(str(tmp_path / "a.zarr"), other)


# -- tiers --------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_tiers_parse_merge_resolve():
    assert parse_tier_spec("high:steps=24,gamma=0.7") == ("high", {"steps": 24, "gamma": 0.7})
    tiers = merge_tiers(DEFAULT_TIERS, ["high:steps=24", "thumb:steps=1,gamma=0"])
    assert tiers["high"] == {"steps": 24, "gamma": 0.8, "seed": 0}
    assert tiers["thumb"] == {"steps": 1, "gamma": 0.0, "seed": 0}
    s, over = resolve(tiers, "standard")
    assert (s.steps, s.gamma, s.seed, over) == (4, 0.0, 0, False)
    s, over = resolve(tiers, "standard", seed=7)
    assert (s.seed, over) == (7, True)
    s, over = resolve(tiers, "standard", steps=4)
    assert not over  # same as stored
    for bad in (lambda: resolve(tiers, "nope"), lambda: resolve(tiers, "high", steps=-1),
                lambda: resolve(tiers, "high", gamma=-1), lambda: merge_tiers({}, ["x:steps=2"]),
                lambda: parse_tier_spec("bad name:steps=2"), lambda: parse_tier_spec("x:foo=1"),
                lambda: check_tiers({"x": {"steps": 2.5, "gamma": 0}})):
        with pytest.raises(TierError):
            bad()


# -- caches and the reader ----------------------------------------------------------------
@pytest.mark.timeout(60)
def test_disk_lru_evicts_least_recently_used(tmp_path: Path):
    lru = DiskLRU(tmp_path / "c", max_bytes=1000)
    keys = [f"{i:064x}" for i in range(1, 5)]
    for k in keys[:3]:
        lru.put(k, b"x" * 300)
        time.sleep(0.02)
    assert lru.get(keys[0]) == b"x" * 300  # refresh: now keys[1] is the oldest
    time.sleep(0.02)
    lru.put(keys[3], b"y" * 300)  # 1200 > 1000 -> evict down to 900
    assert lru.get(keys[1]) is None
    assert lru.get(keys[0]) is not None and lru.get(keys[3]) is not None
    assert lru.size() <= 1000
    with pytest.raises(ValueError):
        lru.get("../../etc/passwd")


@pytest.mark.timeout(60)
def test_decoded_key_depends_on_content_settings_and_model():
    from cdc.interface import DecodeSettings

    s = DecodeSettings(steps=4, gamma=0.0, seed=0)
    k = decoded_key("a.png", "ab" * 32, s, "sha256:" + "cd" * 32)
    assert k == decoded_key("a.png", "ab" * 32, s, "CD" * 32)  # prefix/case ignored
    assert k != decoded_key("a.png", "ef" * 32, s, "cd" * 32)
    assert k != decoded_key("a.png", "ab" * 32, DecodeSettings(4, 0.0, 1), "cd" * 32)
    assert k != decoded_key("a.png", "ab" * 32, s, "ee" * 32)
    assert k != decoded_key("a.png", "ab" * 32, s, "cd" * 32, fmt="WEBP")


@pytest.fixture
def small_archive(tmp_path: Path, codec: CDCCodec, tree: Path) -> Archive:
    items, _ = plan_inputs(str(tree))
    arch, _ = open_or_create(str(tmp_path / "r.zarr"), codec, shard_size=8,
                             tiers=merge_tiers(DEFAULT_TIERS, ["quick:steps=2,gamma=0"]))
    list(encode_shard(codec, arch, plan_shards(items, set(), set(), 8)[0]))
    return Archive.open(arch.url)


@pytest.mark.timeout(60)
def test_reader_decodes_lazily_and_caches(small_archive: Archive, codec: CDCCodec, tmp_path: Path):
    lru = DiskLRU(tmp_path / "cache")
    r = Reader(small_archive, codec, cache=lru, write_archive_cache=True)
    first = r.get("a.png", "quick")
    assert first.source == "decoded" and (first.width, first.height) == (56, 40)
    img = Image.open(io.BytesIO(first.data))
    ref = codec.decompress(small_archive["a.png"].data, steps=2, gamma=0.0, seed=0)
    assert np.array_equal(np.asarray(img), np.asarray(ref))
    assert r.get("a.png", "quick").source == "cache"
    webp = r.get("a.png", "quick", fmt="WEBP")
    assert webp.source == "cache" and Image.open(io.BytesIO(webp.data)).format == "WEBP"
    # written back to the archive: a reader with an empty local cache finds it there
    r2 = Reader(Archive.open(small_archive.url, read_only=True), codec,
                cache=DiskLRU(tmp_path / "c2"))
    assert r2.get("a.png", "quick").source == "archive-cache"
    # an override is a different image, never served from the tier's archive cache
    over = r2.get("a.png", "quick", seed=5, gamma=0.5)
    assert over.source == "decoded" and over.data != first.data
    with pytest.raises(RecordNotFoundError):
        r.get("nope.png", "quick")
    with pytest.raises(FailedRecordError, match="broken.png"):
        r.get("broken.png", "quick")
    with pytest.raises(TierError):
        r.get("a.png", "ultra")


@pytest.mark.timeout(60)
def test_reader_refuses_other_model(small_archive: Archive, other_weights_file: str):
    with pytest.raises(ModelMismatchError):
        Reader(small_archive, CDCCodec.from_pretrained(other_weights_file))


@pytest.mark.timeout(60)
def test_output_name():
    assert output_name("a/b.jpg", "PNG") == "a/b.png"
    assert output_name("noext", "WEBP") == "noext.webp"


# -- `cdc get` ----------------------------------------------------------------------------
def _app():
    from jobs.cli import app
    from jobs.ray_cli import register

    register(app)
    return app


@pytest.mark.timeout(60)
def test_cli_get(small_archive: Archive, weights_file: str, tmp_path: Path):
    runner = CliRunner()
    app = _app()
    out = tmp_path / "o" / "a.webp"
    args = ["get", small_archive.url, "a.png", str(out), "--tier", "quick", "--model", weights_file,
            "--cache-dir", str(tmp_path / "cc")]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "decoded" in r.stdout and Image.open(out).size == (56, 40)
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "from cache" in r.stdout
    cases = [
        (["get", small_archive.url, "nope.png", str(out), "--model", weights_file], 1, "nope.png"),
        (["get", small_archive.url, "broken.png", str(out), "--model", weights_file], 1,
         "failed when archived"),
        (["get", small_archive.url, "a.png", str(out), "--tier", "ultra", "--model", weights_file],
         2, "unknown tier 'ultra'"),
        (["get", small_archive.url, "a.png", str(tmp_path / "x.xyz"), "--model", weights_file], 1,
         "x.xyz"),
        (["get", small_archive.url, "a.png", str(out)], 1, "not a shipped model"),
        (["get", str(tmp_path / "none.zarr"), "a.png", str(out), "--model", weights_file], 1,
         "none.zarr"),
    ]
    for argv, code, text in cases:
        r = runner.invoke(app, argv)
        assert r.exit_code == code, (argv, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], r.stderr


@pytest.mark.timeout(60)
def test_load_codec_from_shipped_bytes(weights_file: str, other_weights_file: str, codec: CDCCodec):
    """A worker without the weights file loads the bytes the driver shipped; other weights
    (a different file at the same path on that node) are refused."""
    from cdc import WeightsError
    from jobs.models import load_codec

    data = Path(weights_file).read_bytes()
    c = load_codec("/nowhere/cdc-test.pt", codec.weights_sha256, data)
    assert c.weights_sha256 == codec.weights_sha256
    assert load_codec(weights_file, codec.weights_sha256).weights_sha256 == codec.weights_sha256
    c = load_codec(other_weights_file, codec.weights_sha256, data)  # wrong local file: use bytes
    assert c.weights_sha256 == codec.weights_sha256
    with pytest.raises(WeightsError):
        load_codec(other_weights_file, codec.weights_sha256)


class _ProtocolOnly:
    """A codec with nothing but the ``cdc.ImageCodec`` protocol (no ``config``, no
    ``decompress_batch``), as DiffC/CorrDiff or a future codec may be."""

    def __init__(self, inner: CDCCodec) -> None:
        self._c = inner
        self.codec_id, self.model_id = inner.codec_id, inner.model_id
        self.weights_sha256 = inner.weights_sha256
        self.calls: list[str] = []

    def compress(self, image):
        return self._c.compress(image)

    def compress_batch(self, images):
        self.calls.append(f"compress_batch:{len(images)}")
        return self._c.compress_batch(images)

    def decompress(self, data, steps=None, gamma=None, seed=0):
        self.calls.append("decompress")
        return self._c.decompress(data, steps=steps, gamma=gamma, seed=seed)

    def info(self, data):
        return self._c.info(data)


@pytest.mark.timeout(60)
def test_stages_need_only_the_codec_protocol(tree: Path, tmp_path: Path, codec: CDCCodec):
    proto = _ProtocolOnly(codec)
    items, _ = plan_inputs(str(tree))
    arch, created = open_or_create(str(tmp_path / "p.zarr"), proto, shard_size=8)
    assert created and arch.codec_id == "cdc"
    for plan in plan_shards(items, set(), set(), 8):
        list(encode_shard(proto, arch, plan, options=EncodeOptions(batch_size=4)))
    assert "compress_batch:2" in proto.calls  # a.png and b.png pad to 64x64: one batch
    reader = Reader(Archive.open(arch.url), proto)
    got = reader.get("sub/c.png", "preview")
    assert got.source == "decoded" and (got.width, got.height) == (40, 70)
    ref = codec.decompress(arch["sub/c.png"].data, steps=2, gamma=0.0, seed=0)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(got.data))), np.asarray(ref))


def test_a_core_only_codec_gets_the_rest_of_the_protocol_once(codec: CDCCodec):
    from cdc import CodecError
    from cdc.interface import ImageCodec
    from pipeline.archive.codec_adapter import CoreCodec, full_codec

    assert full_codec(codec) is codec  # toolkit codecs have it all: not wrapped
    proto = _ProtocolOnly(codec)
    full = full_codec(proto)
    assert isinstance(full, CoreCodec) and isinstance(full, ImageCodec)
    assert full_codec(full) is full and full.model_id == codec.model_id
    assert (full.progressive, full.plan_read_bytes, full.pad_multiple) == (False, 0, 64)
    assert full.recommended_tiers() is None and full.decode_paths() == [] and full.meta == {}
    data = codec.compress(Image.fromarray(smooth_image(24, 24, 3)))
    with pytest.raises(CodecError, match="prefix"):
        full.prefix_length(data, bpp=0.1)
    proto.calls.clear()
    outs = full.decompress_batch([data, data], steps=1, gamma=0.0, seeds=[0, 0])
    assert proto.calls == ["decompress", "decompress"]  # one at a time: it has no batch call
    assert np.array_equal(np.asarray(outs[0]), np.asarray(codec.decompress(data, steps=1,
                                                                             gamma=0.0)))


@pytest.mark.timeout(120)
def test_diffc_preview_tier_range_reads_only_a_prefix(tree: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    """A progressive codec's preview decodes from the first bytes of each record only."""
    from tests.test_diffc import make_diffc_weights
    from zoo import codec_from_bytes

    dc = codec_from_bytes(make_diffc_weights(0), "diffc-test-weights")
    items, _ = plan_inputs(str(tree))
    arch, _ = open_or_create(str(tmp_path / "d.zarr"), dc, shard_size=8)
    assert arch.tiers["preview"]["bpp"] > 0 and "bpp" not in arch.tiers["standard"]
    list(encode_shard(dc, arch, plan_shards(items, set(), set(), 8)[0]))
    arch = Archive.open(arch.url)
    full = arch["b.png"].data
    reads: list[int] = []
    real = Archive.read_prefix
    monkeypatch.setattr(Archive, "read_prefix",
                        lambda self, key, n: reads.append(n) or real(self, key, n))
    monkeypatch.setattr(Archive, "__getitem__", lambda self, key: pytest.fail("full read"))
    r = Reader(arch, dc, cache=None, archive_cache=False)
    prev = r.get("b.png", "preview")
    n = dc.prefix_length(full, bpp=arch.tiers["preview"]["bpp"])
    assert n < len(full) and max(reads) <= max(n, dc.plan_read_bytes)
    ref = dc.decompress(full[:n], steps=arch.tiers["preview"]["steps"], gamma=0.0)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(prev.data))), np.asarray(ref))
    monkeypatch.undo()
    std = Reader(arch, dc, cache=None, archive_cache=False).get("b.png", "standard")
    assert std.data != prev.data


def test_steps_zero_only_for_codecs_with_a_base_layer(tmp_path: Path, codec: CDCCodec):
    """steps 0 is the base layer alone (refine's preview); a CDC archive refuses it."""
    with pytest.raises(TierError, match="base layer"):
        open_or_create(str(tmp_path / "z.zarr"), codec,
                       tiers={"preview": {"steps": 0, "gamma": 0.0, "seed": 0}})
    assert not (tmp_path / "z.zarr").exists()


def test_new_archives_start_from_the_models_recommended_tiers(tmp_path: Path, codec: CDCCodec,
                                                              monkeypatch: pytest.MonkeyPatch):
    rec = {"preview": {"steps": 1, "gamma": 1.0, "seed": 0},
           "standard": {"steps": 2, "gamma": 1.0, "seed": 0}}
    monkeypatch.setattr(codec, "meta", {"tiers": rec})
    arch, created = open_or_create(str(tmp_path / "t.zarr"), codec)
    assert created and arch.tiers == check_tiers(rec)
    arch2, _ = open_or_create(str(tmp_path / "u.zarr"), codec,
                              tiers={"high": {"steps": 8, "gamma": 0.8, "seed": 1}})
    assert set(arch2.tiers) == {"high"}


def test_tier_paths_default_first_and_seed_free_at_gamma_zero():
    from pipeline.archive import tier_paths

    tiers = {"preview": {"steps": 2, "gamma": 0.0, "seed": 7},
             "high": {"steps": 16, "gamma": 0.8, "seed": 3},
             "standard": {"steps": 4, "gamma": 0.0, "seed": 0},
             "again": {"steps": 2, "gamma": 0.0, "seed": 1},  # same path as preview at γ = 0
             "fine": {"steps": 16, "gamma": 0.8001, "seed": 3}}  # same γ as coded (0.01 steps)
    assert tier_paths(tiers) == [(4, 0.0, 0), (2, 0.0, 0), (16, 0.8, 3)]


@pytest.mark.timeout(120)
def test_get_decodes_a_chosen_prefix(tree: Path, tmp_path: Path, codec: CDCCodec):
    """`cdc get --bpp` / Reader.get(bpp=): a DiffC record from the prefix within that rate;
    a CDC archive refuses a prefix budget with a TierError naming the codec."""
    from typer.testing import CliRunner

    from jobs.cli import app
    from pipeline.archive.tier_settings import TierError
    from tests.test_diffc import make_diffc_weights
    from zoo import codec_from_bytes

    data = make_diffc_weights(0)
    dc = codec_from_bytes(data, "diffc-test-weights")
    items, _ = plan_inputs(str(tree))
    arch, _ = open_or_create(str(tmp_path / "d.zarr"), dc, shard_size=8)
    list(encode_shard(dc, arch, plan_shards(items, set(), set(), 8)[0]))
    arch = Archive.open(arch.url)
    full = arch["b.png"].data
    info = arch.info("b.png")
    offsets = dc.step_offsets(full)
    bpp = 8 * offsets[2] / (info.width * info.height) + 1e-6  # exactly two coded steps
    got = Reader(arch, dc, cache=None, archive_cache=False).get("b.png", "standard", bpp=bpp)
    ref = dc.decompress(full[: offsets[2]], steps=arch.tiers["standard"]["steps"],
                        gamma=arch.tiers["standard"]["gamma"])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(got.data))), np.asarray(ref))
    weights = tmp_path / "diffc.pt"
    weights.write_bytes(data)
    out = tmp_path / "b.png"
    r = CliRunner().invoke(app, ["get", arch.url, "b.png", str(out), "--bpp", f"{bpp:.6f}",
                                 "-m", str(weights), "--no-cache"])
    assert r.exit_code == 0, r.output
    assert "prefix within" in r.output
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(ref))
    cdc_arch, _ = open_or_create(str(tmp_path / "c.zarr"), codec)
    with pytest.raises(TierError, match="cdc streams do not decode from a prefix"):
        Reader(cdc_arch, codec, cache=None).settings("standard", bpp=0.5)
