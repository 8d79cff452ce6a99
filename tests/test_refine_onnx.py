"""The torch-free refine decoder (ONNX graphs + numpy) against the torch codec it mirrors."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cdc import tiling
from cdc.errors import DecodeSettingsError, ModelMismatchError, ResourceLimitError, WeightsError
from cdc.limits import DecodeBudget
from cdc.refine import degrid
from cdc.refine import onnx_decoder as od
from tests.conftest import smooth_image, tile_by_side
from tests.tiny_refine import latent_refine_bytes

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]


def _fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported yet) and return its stdout."""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


# -- the numpy twins ---------------------------------------------------------------------
@pytest.mark.parametrize("size,out", [((5, 7), (10, 14)), ((17, 9), (67, 33)), ((1, 3), (4, 9)),
                                      ((8, 8), (8, 8)), ((48, 72), (64, 96)),
                                      ((38, 152), (99, 403)), ((66, 269), (99, 403))])
def test_bicubic_upsample_is_torchs(size, out):
    x = torch.rand(1, 3, *size) * 2 - 1
    want = F.interpolate(x, size=out, mode="bicubic", align_corners=False).clamp(-1, 1)
    got = od.upsample_bicubic(x[0].numpy(), *out)
    exact = all(o % s == 0 for s, o in zip(size, out))  # integer ratios: the same float ops
    np.testing.assert_allclose(got, want[0].numpy(), atol=2e-6 if exact else 3e-5)


@pytest.mark.parametrize("h,w", [(64, 64), (37, 53), (5, 9), (3, 3), (16, 200)])
def test_grid_filter_is_the_torch_filter(h, w):
    g = torch.Generator().manual_seed(h * w)
    refined = torch.rand(1, 3, h, w, generator=g) * 2 - 1
    base = torch.rand(1, 3, h, w, generator=g) * 2 - 1
    grid = torch.zeros(1, 1, 8, 8).uniform_(-0.2, 0.2, generator=g).repeat(1, 1, 8, 30)
    refined = refined + grid[..., :h, :w]  # something periodic to remove
    want = degrid.remove_grid(refined, base, 8, 8)[0].numpy()
    got = od.remove_grid(refined[0].numpy(), base[0].numpy(), 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - refined[0].numpy()).max() > 0.01  # it did remove something


# -- the whole decoder against the torch codec -------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _small_images_tile():
    """Every decode in this module runs the tiled loops (a 99x403 image would run whole)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiling, "whole", tile_by_side)
        yield


@pytest.fixture(scope="module")
def pair():
    """A tiny random latent refine codec with small TAEF2 tiles (so both tiled loops run),
    and its ONNX decoder built from the exported graphs."""
    from cdc.refine.onnx_export import export_refiner, export_space
    from zoo import codec_from_bytes

    codec = codec_from_bytes(latent_refine_bytes(3), "tiny")
    codec.space.tile = 128  # encoder tiles past 384 px, decoder tiles past 256
    dec = od.OnnxRefineDecoder(export_refiner(codec), export_space(codec.space), threads=1)
    return codec, dec


@pytest.fixture(scope="module")
def stream(pair):
    codec, _ = pair
    img = Image.fromarray(smooth_image(99, 403, seed=5))
    return codec.with_rate(0.4).compress(img)


def test_standard_and_preview_decode_as_the_torch_codec(pair, stream):
    codec, dec = pair
    assert dec.model_id == codec.model_id and dec.digest == codec.digest
    for steps in (0, 1):
        want = np.asarray(codec.decompress(stream, steps=steps)).astype(int)
        got = np.asarray(dec.decompress(stream, steps=steps)).astype(int)
        assert got.shape == want.shape == (99, 403, 3)
        diff = np.abs(got - want)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (steps, diff.max())
    refined = np.asarray(dec.decompress(stream, steps=1)).astype(int)
    preview = np.asarray(dec.decompress(stream, steps=0)).astype(int)
    assert np.abs(refined - preview).mean() > 0.1  # the refiner did something


@pytest.mark.parametrize("factor", [(4, 3), (8, 3)])
def test_a_fractional_downscale_decodes_as_the_torch_codec(pair, monkeypatch, factor):
    from fractions import Fraction

    from cdc.refine import downscale

    codec, dec = pair
    code = downscale.code(Fraction(*factor))
    monkeypatch.setattr(downscale, "ladder", lambda scales: (code,))
    data = codec.with_rate(0.4).compress(Image.fromarray(smooth_image(99, 403, seed=6)))
    for steps in (0, 1):
        want = np.asarray(codec.decompress(data, steps=steps)).astype(int)
        got = np.asarray(dec.decompress(data, steps=steps)).astype(int)
        diff = np.abs(got - want)
        assert got.shape == (99, 403, 3) and diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_a_prefix_decodes_as_preview_only(pair, stream):
    codec, dec = pair
    prefix = stream[:codec.prefix_length(stream)]
    np.testing.assert_array_equal(np.asarray(dec.decompress(prefix, steps=0)),
                                  np.asarray(codec.decompress(prefix, steps=0)))
    with pytest.raises(DecodeSettingsError, match="only the base layer"):
        dec.decompress(prefix, steps=1)


def test_paths_it_does_not_run_and_other_models_are_refused(pair, stream):
    _, dec = pair
    assert dec.supports(None, None) and dec.supports(0, 0.6) and not dec.supports(3, 0.6)
    with pytest.raises(DecodeSettingsError, match="ONNX decoder runs"):
        dec.decompress(stream, steps=3, gamma=0.6)
    from zoo import codec_from_bytes

    other = codec_from_bytes(latent_refine_bytes(4), "other").with_rate(0.5).compress(
        Image.fromarray(smooth_image(40, 48, seed=1)))
    with pytest.raises(ModelMismatchError, match="same weights"):
        dec.decompress(other, steps=1)


def test_the_budget_refuses_what_the_torch_codec_refuses(pair, stream):
    codec, dec = pair
    small = DecodeBudget(max_alloc_bytes=codec._alloc_bytes(99, 403) - 1)
    with pytest.raises(ResourceLimitError, match="alloc_bytes"):
        dec.with_budget(small).decompress(stream, steps=1)
    dec.with_budget(None)


def test_bad_graph_bytes_are_a_weights_error(pair):
    _, dec = pair
    with pytest.raises(WeightsError, match="refiner"):
        od.OnnxRefineDecoder(b"not onnx", {})
    with pytest.raises(WeightsError, match="metadata"):
        od.OnnxRefineDecoder(b"", {})
    broken = od.OnnxRefineDecoder(dec._graphs["refiner"], {k: b"\x08\x07" for k in od.SPACE_PARTS})
    with pytest.raises(WeightsError, match="encoder_trunk"):  # sessions are built on first use
        broken.refine(np.zeros((3, 16, 16), np.float32))


def test_metadata_read_without_onnxruntime_is_onnxruntimes(pair):
    import onnxruntime as ort

    from cdc.refine.onnx_meta import metadata

    _, dec = pair
    graph = dec._graphs["refiner"]
    want = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).get_modelmeta()
    assert metadata(graph) == want.custom_metadata_map and od.META_KEY in metadata(graph)
    for bad in (b"\x08", b"\x72\x05ab", b"\x0f", graph[:len(graph) // 2]):
        with pytest.raises(ValueError):
            metadata(bad)


# -- the zoo: files, digests, staleness, and the shipped model ---------------------------
@pytest.fixture()
def zoo_dir(tmp_path):
    from zoo.store import ship_weights

    d = tmp_path / "zoo"
    ship_weights(latent_refine_bytes(4), "tiny-refine", "refine", zoo_dir=d)
    return d


def test_written_graphs_load_back_digest_checked(zoo_dir):
    from zoo.onnx_graphs import has_onnx, load_onnx_decoder, write_onnx

    assert not has_onnx("tiny-refine", zoo_dir)
    assert load_onnx_decoder("tiny-refine", zoo_dir) is None
    field = write_onnx("tiny-refine", zoo_dir)
    assert has_onnx("tiny-refine", zoo_dir) and (zoo_dir / field["file"]).is_file()
    assert load_onnx_decoder("tiny-refine", zoo_dir).model_id == "refine-latent-test"
    part = zoo_dir / "weights/onnx/taef2_decoder_tail.onnx"
    part.write_bytes(part.read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsError, match="sha256"):
        load_onnx_decoder("tiny-refine", zoo_dir)


def test_graphs_of_other_weights_are_refused(zoo_dir):
    from zoo.onnx_graphs import load_onnx_decoder, write_onnx
    from zoo.store import ship_weights

    write_onnx("tiny-refine", zoo_dir)
    reg = json.loads((zoo_dir / "models.json").read_text())
    onnx_field = reg["tiny-refine"]["onnx"]
    ship_weights(latent_refine_bytes(5), "tiny-refine", "refine", zoo_dir=zoo_dir,
                 entry={"onnx": onnx_field})  # shipped again, graphs not re-exported
    with pytest.raises(WeightsError, match="export-onnx tiny-refine"):
        load_onnx_decoder("tiny-refine", zoo_dir)


def test_the_shipped_default_decodes_its_golden_stream_without_torch(tmp_path):
    """In a fresh process: no torch import, and the golden image within a grey level."""
    golden = REPO / "tests/fixtures/golden"
    code = (
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from zoo.onnx_graphs import load_onnx_decoder\n"
        "dec = load_onnx_decoder('refine-avif', threads=1)\n"
        f"data = open({str(golden / 'refine-avif.cdc')!r}, 'rb').read()\n"
        "img = np.asarray(dec.decompress(data)).astype(int)\n"
        f"ref = np.asarray(Image.open({str(golden / 'refine-avif.png')!r})).astype(int)\n"
        "d = np.abs(img - ref)\n"
        "print('torch' in sys.modules, img.shape == ref.shape, d.max(), (d > 0).mean())\n")
    loaded, same_shape, dmax, share = _fresh_python(code).split()
    assert loaded == "False" and same_shape == "True"
    assert int(dmax) <= 1 and float(share) < 1e-2


def test_cli_decompress_engines(tmp_path):
    golden = REPO / "tests/fixtures/golden/refine-avif.cdc"
    shutil.copy(golden, tmp_path / "g.cdc")
    outs = {}
    for engine in ("onnx", "torch"):
        r = subprocess.run([sys.executable, "-m", "jobs.cli", "decompress", str(tmp_path / "g.cdc"),
                            str(tmp_path / f"{engine}.png"), "--engine", engine],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs[engine] = np.asarray(Image.open(tmp_path / f"{engine}.png")).astype(int)
    assert np.abs(outs["onnx"] - outs["torch"]).max() <= 1
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "decompress", str(tmp_path / "g.cdc"),
                        str(tmp_path / "x.png"), "--engine", "onnx", "--steps", "3",
                        "--gamma", "0.6"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--engine onnx" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_cli_auto_engine_falls_back_to_torch_when_onnxruntime_breaks(tmp_path):
    """With onnxruntime present but broken (here: an import that fails), `--engine auto`
    decodes the standard tier with torch after one warning line; `--engine onnx` refuses in
    one line and writes nothing. A preview never needs onnxruntime, so it still runs on ONNX."""
    broken = tmp_path / "site" / "onnxruntime"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('simulated broken install')\n")
    shutil.copy(REPO / "tests/fixtures/golden/refine-avif.cdc", tmp_path / "g.cdc")
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path / 'site'}:{REPO}"}

    def run(engine: str, out: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.cli", "decompress",
                               str(tmp_path / "g.cdc"), str(tmp_path / out), "--engine", engine,
                               *extra], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=env)

    r = run("auto", "auto.png")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: decoding with torch") == 1 and "simulated" in r.stderr
    ref = np.asarray(Image.open(REPO / "tests/fixtures/golden/refine-avif.png")).astype(int)
    assert np.abs(np.asarray(Image.open(tmp_path / "auto.png")).astype(int) - ref).max() <= 1
    r = run("onnx", "onnx.png")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "simulated" in r.stderr
    assert not (tmp_path / "onnx.png").exists()
    r = run("onnx", "preview.png", "--steps", "0")
    assert r.returncode == 0 and (tmp_path / "preview.png").exists(), r.stderr


# -- the ONNX-first codec the archive readers use ------------------------------------------
def test_onnx_first_codec_speaks_the_protocol_without_torch_until_it_must(pair, stream):
    from cdc.interface import ImageCodec
    from cdc.refine.onnx_codec import OnnxFirstRefineCodec

    codec, dec = pair
    loads = []
    fast = OnnxFirstRefineCodec(dec, lambda: loads.append(1) or codec)
    assert isinstance(fast, ImageCodec) and not fast.torch_loaded
    assert (fast.codec_id, fast.model_id, fast.weights_sha256, fast.progressive) == \
        (codec.codec_id, codec.model_id, codec.weights_sha256, codec.progressive)
    assert fast.decode_defaults() == codec.decode_defaults()
    assert fast.recommended_tiers() == codec.recommended_tiers()
    assert fast.pad_multiple == codec.pad_multiple and fast.info(stream) == codec.info(stream)
    assert fast.prefix_length(stream[:fast.plan_read_bytes]) == codec.prefix_length(stream)
    a = np.asarray(fast.decompress(stream, steps=1)).astype(int)
    assert not fast.torch_loaded and not loads
    assert np.abs(a - np.asarray(codec.decompress(stream, steps=1)).astype(int)).max() <= 1
    high = fast.decompress_batch([stream], steps=3, gamma=0.6, seeds=2)[0]  # torch's path
    assert fast.torch_loaded and loads == [1]
    assert np.array_equal(np.asarray(high),
                          np.asarray(codec.decompress(stream, steps=3, gamma=0.6, seed=2)))


def test_onnx_first_codec_decodes_with_torch_when_a_session_cannot_be_built(pair, stream,
                                                                             monkeypatch):
    from cdc.refine.onnx_codec import OnnxFirstRefineCodec

    codec, dec = pair
    fast = OnnxFirstRefineCodec(dec, lambda: codec)

    def broken(part: str):
        raise WeightsError(f"ONNX graph {part}: simulated")

    monkeypatch.setattr(dec, "session", broken)
    got = fast.decompress(stream, steps=1)
    assert fast.torch_loaded and "simulated" in fast.onnx_failure
    assert np.array_equal(np.asarray(got), np.asarray(codec.decompress(stream, steps=1)))
    fast.decompress(stream, steps=1)  # and it does not try the graphs again


def test_archive_reader_decodes_tiers_through_the_onnx_first_codec(pair, tmp_path):
    from cdc.refine.onnx_codec import OnnxFirstRefineCodec
    from pipeline.archive import encode_shard, open_or_create, plan_inputs, plan_shards
    from pipeline.archive.record_reader import Reader
    from storage import Archive

    codec, dec = pair
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(smooth_image(72, 96, seed=2)).save(root / "a.png")
    arch, _ = open_or_create(str(tmp_path / "r.zarr"), codec.with_rate(0.5), shard_size=8)
    items, _ = plan_inputs(str(root))
    list(encode_shard(codec, arch, plan_shards(items, set(), set(), 8)[0]))
    arch = Archive.open(arch.url)
    fast = OnnxFirstRefineCodec(dec, lambda: codec)
    r = Reader(arch, fast, cache=None, archive_cache=False)
    for tier in ("preview", "standard"):
        got = np.asarray(Image.open(io.BytesIO(r.get("a.png", tier).data))).astype(int)
        t = arch.tiers[tier]
        want = np.asarray(codec.decompress(arch["a.png"].data, steps=t["steps"])).astype(int)
        assert np.abs(got - want).max() <= 1, tier
    assert not fast.torch_loaded


def _default_model_archive(tmp_path: Path, seed: int) -> tuple:
    """(the shipped default codec at 0.3 bpp, the URL of an archive of one 96×128 image
    "a.png" it wrote, that record's stream)."""
    from pipeline.archive import encode_shard, open_or_create, plan_inputs, plan_shards
    from storage import Archive
    from zoo import load_codec

    codec = load_codec("refine-avif").with_rate(0.3)
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(smooth_image(96, 128, seed=seed)).save(root / "a.png")
    arch, _ = open_or_create(str(tmp_path / "r.zarr"), codec, shard_size=8)
    items, _ = plan_inputs(str(root))
    list(encode_shard(codec, arch, plan_shards(items, set(), set(), 8)[0]))
    return codec, arch.url, Archive.open(arch.url)["a.png"].data


def test_cdc_get_of_a_refine_archive_imports_no_torch(tmp_path):
    """`cdc get` of the shipped default's archive, preview and standard, in a fresh process:
    no torch import, and the torch codec's pixels within a grey level."""
    codec, url, data = _default_model_archive(tmp_path, seed=3)
    for tier, steps in (("preview", 0), ("standard", 1)):
        out = tmp_path / f"{tier}.png"
        code = ("import sys\nfrom jobs.cli import main\n"
                f"sys.argv = ['cdc', 'get', {str(url)!r}, 'a.png', {str(out)!r}, "
                f"'--tier', {tier!r}, '--no-cache']\n"
                "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                "print('torch' in sys.modules, 'onnxruntime' in sys.modules)\n")
        torch_in, ort_in = _fresh_python(code).strip().splitlines()[-1].split()
        assert torch_in == "False", tier
        assert ort_in == str(tier != "preview"), tier  # a preview builds no session
        got = np.asarray(Image.open(out)).astype(int)
        want = np.asarray(codec.decompress(data, steps=steps)).astype(int)
        assert np.abs(got - want).max() <= 1, tier


def test_every_registered_onnx_hook_resolves():
    from cdc.registry import CODECS, resolve

    hooks = [(c, h) for c, e in CODECS.items()
             for h in (e.onnx_export, e.onnx_decoder, e.onnx_codec) if h]
    assert ("refine", "cdc.refine.onnx_decoder:OnnxRefineDecoder") in hooks
    for _, h in hooks:
        assert callable(resolve(h)), h


def test_workers_decode_shipped_refine_models_on_onnx_and_check_the_digest():
    """`cdc export`'s actors load the codec through load_decoding_codec: the ONNX-first codec
    with their own thread count for the driver's weights; other weights go to the torch
    path, which refuses them in one line."""
    from cdc.refine.onnx_codec import OnnxFirstRefineCodec
    from jobs.models import load_decoding_codec
    from zoo import registry

    sha = registry()["refine-avif"]["sha256"]
    codec = load_decoding_codec("refine-avif", threads=1, expected_sha256=f"sha256:{sha}")
    assert isinstance(codec, OnnxFirstRefineCodec) and codec.decoder.threads == 1
    assert codec.weights_sha256 == sha and not codec.torch_loaded
    with pytest.raises(WeightsError, match="differ from the driver's"):
        load_decoding_codec("refine-avif", threads=1, expected_sha256="0" * 64)


@pytest.mark.timeout(300)
def test_cdc_serve_decodes_a_shipped_refine_archive_on_onnx(tmp_path):
    """`cdc serve` of a refine-avif archive: the standard tier on the ONNX graphs (torch not
    loaded), within a grey level of the torch decoder; the high tier then loads torch."""
    from tests.serve_helpers import CdcServe, http_get

    codec, archive, data = _default_model_archive(tmp_path, seed=4)
    with CdcServe(archive, model="refine-avif", args=["--no-cache"]) as url:
        status, _, body = http_get(f"{url}/images/a.png?tier=standard")
        assert status == 200
        got = np.asarray(Image.open(io.BytesIO(body))).astype(int)
        want = np.asarray(codec.decompress(data, steps=1)).astype(int)
        assert np.abs(got - want).max() <= 1
        assert json.loads(http_get(f"{url}/healthz")[2])["engine"] == "onnx"
        assert http_get(f"{url}/images/a.png?tier=high")[0] == 200
        assert json.loads(http_get(f"{url}/healthz")[2])["engine"] == "onnx+torch"
