"""The `cdc` CLI: compress/decompress/info, and errors that name the file, exit non-zero,
and leave no partial output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from jobs.cli import app
from tests.conftest import smooth_image

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def png(tmp_path: Path) -> Path:
    p = tmp_path / "in.png"
    Image.fromarray(smooth_image(40, 56)).save(p)
    return p


def test_compress_decompress_info(png: Path, tmp_path: Path, weights_file: str):
    stream = tmp_path / "a.cdc"
    r = runner.invoke(app, ["compress", str(png), str(stream), "--model", weights_file])
    assert r.exit_code == 0, r.output
    assert "bpp" in r.output and stream.stat().st_size > 0
    out = tmp_path / "out.png"
    r = runner.invoke(app, ["decompress", str(stream), str(out), "--model", weights_file,
                            "--steps", "2", "--gamma", "0.8", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (56, 40)
    r = runner.invoke(app, ["info", str(stream), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["width"] == 56 and info["codec"] == "cdc" and set(info["sections"]) == {"Z", "Y"}


def test_errors_name_the_file_and_write_nothing(tmp_path: Path, png: Path, weights_file: str):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    dst = tmp_path / "bad.cdc"
    r = runner.invoke(app, ["compress", str(bad), str(dst), "--model", weights_file])
    assert r.exit_code == 1 and "bad.png" in r.output and not dst.exists()

    r = runner.invoke(app, ["compress", str(tmp_path / "nope.png"), str(dst),
                            "--model", weights_file])
    assert r.exit_code == 1 and "nope.png" in r.output and "no such file" in r.output

    garbage = tmp_path / "g.cdc"
    garbage.write_bytes(b"hello world, not a stream")
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"existing data")
    r = runner.invoke(app, ["decompress", str(garbage), str(keep), "--model", weights_file])
    assert r.exit_code == 3 and "g.cdc" in r.output and "magic" in r.output
    assert keep.read_bytes() == b"existing data", "existing output must survive a failed decode"
    assert list(tmp_path.glob(".keep.png.*")) == []

    r = runner.invoke(app, ["info", str(garbage)])
    assert r.exit_code == 3 and "g.cdc" in r.output

    r = runner.invoke(app, ["compress", str(png), str(dst), "--model", str(tmp_path / "w.pt")])
    assert r.exit_code == 1 and "w.pt" in r.output and not dst.exists()


def test_truncated_stream_cli(tmp_path: Path, png: Path, weights_file: str):
    stream = tmp_path / "a.cdc"
    assert runner.invoke(
        app, ["compress", str(png), str(stream), "--model", weights_file]
    ).exit_code == 0
    stream.write_bytes(stream.read_bytes()[:-7])
    out = tmp_path / "o.png"
    r = runner.invoke(app, ["decompress", str(stream), str(out), "--model", weights_file])
    assert r.exit_code == 3 and "a.cdc" in r.output and not out.exists()


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "compress" in r.stdout


def test_eval_writes_table_csv_and_plots(tmp_path: Path, weights_file: str):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(64, 80, seed=i)).save(imgs / f"{i}.png")
    out = tmp_path / "ev"
    r = runner.invoke(app, ["eval", str(imgs), str(out), "--model", weights_file,
                            "--steps", "1,2", "--classical", "jpeg", "--metrics", "psnr,ms_ssim"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    names = set(summary["entries"])
    assert {"cdc-test s1 g0", "cdc-test s2 g0", "jpeg@cdc-test s1 g0"} <= names
    jpeg, ours = summary["entries"]["jpeg@cdc-test s1 g0"], summary["entries"]["cdc-test s1 g0"]
    assert abs(jpeg["bpp"] - ours["bpp"]) / ours["bpp"] < 0.5  # matched rate
    assert (out / "per_image.csv").read_text().count("\n") == 1 + 2 * 3
    assert (out / "rd_psnr.png").stat().st_size > 0


def test_eval_errors_name_the_problem(tmp_path: Path, weights_file: str):
    r = runner.invoke(app, ["eval", str(tmp_path / "nothing"), str(tmp_path / "o"),
                            "--model", weights_file])
    assert r.exit_code == 1 and "nothing" in r.output
    r = runner.invoke(app, ["eval", str(tmp_path), str(tmp_path / "o"), "--model", weights_file,
                            "--metrics", "psnr,bogus"])
    assert r.exit_code == 2 and "bogus" in r.output
    for bad in ("2/2", "x", "1/0"):
        r = runner.invoke(app, ["eval", str(tmp_path), str(tmp_path / "o"), "--model",
                                weights_file, "--shard", bad])
        assert r.exit_code == 2 and "--shard" in r.output and "Traceback" not in r.output


def test_eval_progressive_prefixes_count_only_bytes_read(tmp_path: Path):
    from tests.test_diffc import make_diffc_weights

    w = tmp_path / "diffc.pt"
    w.write_bytes(make_diffc_weights(0))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(smooth_image(24, 32, seed=1)).save(imgs / "a.png")
    out = tmp_path / "ev"
    r = runner.invoke(app, ["eval", str(imgs), str(out), "--model", str(w), "--steps", "1",
                            "--classical", "", "--metrics", "psnr", "--prefix-bpp", "2,6"])
    assert r.exit_code == 0, r.output
    e = json.loads((out / "summary.json").read_text())["entries"]
    full, low, mid = (e[k]["bpp"] for k in ("diffc-test s1 g0", "diffc-test s1 g0 @2bpp",
                                            "diffc-test s1 g0 @6bpp"))
    assert low <= mid <= full and low < full
    # Classical codecs are matched to each prefix budget too (each is a rate of its own).
    out2 = tmp_path / "ev2"
    r = runner.invoke(app, ["eval", str(imgs), str(out2), "--model", str(w), "--steps", "1",
                            "--classical", "jpeg", "--metrics", "psnr", "--prefix-bpp", "2,6"])
    assert r.exit_code == 0, r.output
    e2 = json.loads((out2 / "summary.json").read_text())["entries"]
    assert {f"jpeg@diffc-test s1 g0{b}" for b in ("", " @2bpp", " @6bpp")} <= set(e2)


# -- the model comes from the stream ----------------------------------------------------------
def test_decompress_finds_the_model_the_stream_names(png: Path, tmp_path: Path, weights_file: str,
                                                     other_weights_file: str, monkeypatch):
    stream, out = tmp_path / "a.cdc", tmp_path / "out.png"
    r = runner.invoke(app, ["compress", str(png), str(stream), "--model", weights_file])
    assert r.exit_code == 0, r.output  # -m remembered the weights in the local model cache
    r = runner.invoke(app, ["decompress", str(stream), str(out), "--steps", "1"])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (56, 40)
    r = runner.invoke(app, ["info", str(stream), "--json"])
    assert json.loads(r.output)["model"].endswith("(local model cache)")
    # -m naming other weights: one line before any decoding, exit 3
    r = runner.invoke(app, ["decompress", str(stream), str(out), "-m", other_weights_file])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 3 and len(lines) == 1, r.output
    assert "a.cdc: written by the cdc model" in lines[0] and "leave out --model" in lines[0]
    # a model found nowhere: one line that says where it looked
    monkeypatch.setenv("CDC_MODEL_CACHE", str(tmp_path / "empty-cache"))
    r = runner.invoke(app, ["decompress", str(stream), str(out)])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "pass --model" in lines[0], r.output
    assert "not a shipped model" in lines[0] and "empty-cache" in lines[0]


def test_decompress_a_shipped_models_stream_without_model(tmp_path: Path):
    """The corrdiff-small fixture decodes with no -m (it used to need `-m corrdiff-small`)."""
    src = Path(__file__).parent / "fixtures" / "streams" / "corrdiff-small-a.cdc"
    out = tmp_path / "c.png"
    r = runner.invoke(app, ["decompress", str(src), str(out), "--steps", "1"])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (72, 56)
    r = runner.invoke(app, ["decompress", str(src), str(out), "-m", "cdc-small"])
    assert r.exit_code == 3 and "corrdiff model corrdiff-small" in r.stderr, r.output


def test_decode_budget_option(png: Path, tmp_path: Path, weights_file: str):
    stream, out = tmp_path / "a.cdc", tmp_path / "out.png"
    r = runner.invoke(app, ["compress", str(png), str(stream), "-m", weights_file])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["decompress", str(stream), str(out), "--decode-budget", "pixels=1000"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 3 and len(lines) == 1 and "max_pixels" in lines[0], r.output
    assert not out.exists()
    r = runner.invoke(app, ["decompress", str(stream), str(out), "--decode-budget", "bogus=1"])
    assert r.exit_code == 2 and "unknown decode budget field" in r.stderr


_NO_TORCH = r"""
import json, sys
sys.argv = ["cdc", *sys.argv[1:]]
from jobs.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "compressai", "torchvision", "numpy", "ray")
               if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def test_commands_that_code_nothing_import_no_torch(tmp_path: Path, codec):
    """info, verify, models and --help start without torch or CompressAI (a fresh process)."""
    from pipeline.archive import open_or_create
    from storage import Record

    stream = tmp_path / "a.cdc"
    stream.write_bytes(codec.compress(smooth_image(24, 32)))
    arch, _ = open_or_create(str(tmp_path / "a.zarr"), codec, shard_size=2)
    arch.write_shard(0, [Record(key="a.png", data=stream.read_bytes(), height=24, width=32)])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                "")]))
    for argv in (["info", str(stream)], ["verify", str(tmp_path / "a.zarr")], ["models"],
                 ["--help"]):
        r = subprocess.run([sys.executable, "-c", _NO_TORCH, *argv], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["code"] in (0, None), (argv, r.stderr[-2000:])
        assert res["heavy"] == [] if argv[0] != "verify" else "torch" not in res["heavy"], \
            (argv, res)


_DIFFC_THEN_CDC = r"""
import json, sys
import numpy as np, torch
from cdc.diffc.model import DIFFC_CONFIGS, DiffusionPrior, weights_bytes
from zoo import codec_from_bytes
torch.manual_seed(0)
prior = DiffusionPrior(DIFFC_CONFIGS["diffc-test"])  # zipf-coded indices, like diffc-small
img = np.random.default_rng(0).integers(0, 255, (16, 20, 3), dtype=np.uint8)
d = codec_from_bytes(weights_bytes(prior, "diffc-test"), "diffc")
ok = d.config.index_coding == "zipf" and d.decompress(d.compress(img)).size == (20, 16)
package = "compressai" in sys.modules  # DiffC needs only CompressAI's compiled coder
sys.path[:0] = [sys.argv[1] + "/tests"]
from conftest import make_weights  # now CompressAI's package, after its extensions
c = codec_from_bytes(make_weights(0), "cdc")
ok = ok and c.decompress(c.compress(img), steps=1).size == (20, 16)
print(json.dumps({"ok": ok, "package_before_cdc": package}))
"""


def test_diffc_codes_without_compressais_package_and_cdc_still_works_after():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                "")]))
    r = subprocess.run([sys.executable, "-c", _DIFFC_THEN_CDC, str(ROOT)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"ok": True,
                                                             "package_before_cdc": False}


def test_serve_driver_checks_the_model_without_torch(tmp_path: Path, codec, weights_file: str):
    """``cdc serve``'s driver (it starts Ray Serve and the HTTP proxy) only checks the
    weights' digest: no torch, no CompressAI; the replicas load the model (they decode)."""
    from pipeline.archive import open_or_create

    arch, _ = open_or_create(str(tmp_path / "a.zarr"), codec, shard_size=2)
    child = ("import json, sys\nfrom jobs.serve import build_app\n"
             "app = build_app(sys.argv[1], model=sys.argv[2])\n"
             "print(json.dumps([m for m in ('torch', 'compressai') if m in sys.modules]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                "")]))
    r = subprocess.run([sys.executable, "-c", child, arch.url, weights_file], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_codec_for_stream_in_python(tmp_path: Path, weights_file: str, codec):
    from cdc import WeightsError
    from zoo import codec_for_stream
    from zoo.cache import remember

    data = codec.compress(smooth_image(24, 32))
    with pytest.raises(WeightsError, match="not a shipped model"):
        codec_for_stream(data)
    remember(codec.weights_sha256, weights_file)
    found = codec_for_stream(data)
    assert found.weights_sha256 == codec.weights_sha256
    assert found.decompress(data, steps=1).size == (32, 24)


def test_info_uses_the_shipped_models_config_for_latent_shapes(tmp_path: Path, monkeypatch):
    """A latent model's stream: `cdc info` shows its own latent shapes (a content latent at
    stride 32 here), not pixel-space CDC's, when the stream's digest names a shipped model."""
    import dataclasses

    import torch

    import zoo
    import zoo.store
    from cdc.describe import latent_shapes
    from cdc.models import ConditionalDiffusionCompressor
    from cdc.presets import PRESETS
    from cdc.weights import weights_bytes
    from zoo import codec_from_bytes, load_space, sha256_hex

    cfg = dataclasses.replace(PRESETS["lcdc-test"], name="lcdc-test-s4", y_stride=4)
    monkeypatch.setitem(PRESETS, "lcdc-test-s4", cfg)
    torch.manual_seed(0)
    model = ConditionalDiffusionCompressor(cfg, load_space("taef2")).eval()
    model.update()
    data = weights_bytes(model, "lcdc-x")
    stream = tmp_path / "x.cdc"
    stream.write_bytes(codec_from_bytes(data, "lcdc-x").compress(smooth_image(64, 96)))
    shipped = {**zoo.store.registry(),
               "lcdc-x": {"codec": "cdc", "config": "lcdc-test-s4", "sha256": sha256_hex(data)}}
    monkeypatch.setattr(zoo.store, "registry", lambda: shipped)
    monkeypatch.setattr(zoo, "registry", lambda: shipped)
    r = runner.invoke(app, ["info", str(stream), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    want = latent_shapes(cfg, 64, 96)
    assert info["model"] == "lcdc-x"
    assert info["latent_shapes"] == {"y": list(want["y"]), "z": list(want["hyper"])}
    assert want != latent_shapes(None, 64, 96)
