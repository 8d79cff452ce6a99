"""The `cdc` CLI: compress/decompress/info, and errors that name the file, exit non-zero,
and leave no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from jobs.cli import app
from tests.conftest import smooth_image

runner = CliRunner()


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

    r = runner.invoke(app, ["compress", str(tmp_path / "nope.png"), str(dst), "--model", weights_file])
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
    assert runner.invoke(app, ["compress", str(png), str(stream), "--model", weights_file]).exit_code == 0
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
