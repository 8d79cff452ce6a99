"""Getting a training run onto a lent GPU machine: the kit fits the 64 MiB the device tool
sends, trim/restore leave the index and the files as they were, and the driver runs its
whole plan (pairs, probe, planned steps, relays back) — here on a CPU, with tiny models."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import smooth_image
from PIL import Image

from pipeline.metrics.fetch import cache_dir
from pipeline.training import gpu_kit, gpu_run


@pytest.fixture(autouse=True)
def _cache_dir_restored(monkeypatch):
    """``gpu_run.run`` points ``CDC_CACHE_DIR`` at the kit (its own process, on the device).
    Called in-process here it leaked into every later test of the session, which then
    converted the metric trunks into ``./.gpu-kit/cache`` of the checkout (69 MB, not
    ignored on a fresh clone): the same directory, restored after each test."""
    monkeypatch.setenv("CDC_CACHE_DIR", str(cache_dir()))


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    (r / "docs").mkdir(parents=True)
    (r / "zoo" / "weights").mkdir(parents=True)
    (r / "cdc").mkdir()
    (r / "docs" / "big.png").write_bytes(b"\1" * 300_000)
    (r / "zoo" / "weights" / "lcdc-q1.pt").write_bytes(b"\2" * 200_000)
    (r / "zoo" / "weights" / "taef2_decoder.pth").write_bytes(b"\3" * 1000)
    (r / "cdc" / "code.py").write_text("x = 1\n")
    _git(r, "init", "-q")
    _git(r, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    _git(r, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    return r


def test_trim_sends_less_and_restore_puts_the_index_back(repo):
    before = gpu_kit.travelling_bytes(repo)
    index = _git(repo, "ls-files", "-s")
    trimmed = gpu_kit.trim(repo)
    assert sorted(trimmed) == ["docs/big.png", "zoo/weights/lcdc-q1.pt"]
    after = gpu_kit.travelling_bytes(repo)
    assert after["tracked"] == before["tracked"] - 500_000 and after["untracked"] == 0
    assert (repo / "docs" / "big.png").stat().st_size == 300_000  # still on disk
    assert gpu_kit.trim(repo) == []  # again: nothing tracked is left to trim
    gpu_kit.restore(repo)
    assert _git(repo, "ls-files", "-s") == index
    assert _git(repo, "status", "--porcelain") == ""
    assert gpu_kit.EXCLUDE_BEGIN not in (repo / ".git" / "info" / "exclude").read_text()


def test_trim_refuses_a_staged_change(repo):
    (repo / "cdc" / "code.py").write_text("x = 2\n")
    _git(repo, "add", "cdc/code.py")
    with pytest.raises(RuntimeError, match="staged changes"):
        gpu_kit.trim(repo)
    assert "lcdc-q1.pt" in _git(repo, "ls-files")


def test_pack_fills_the_budget_with_training_photos_only(repo, tmp_path, monkeypatch):
    photos = tmp_path / "train" / "set"
    photos.mkdir(parents=True)
    for i in range(12):
        Image.fromarray(smooth_image(64, 64 + 8 * i, seed=i)).save(photos / f"p{i:02d}.png")
    Image.fromarray(smooth_image(40, 64, seed=99)).save(photos / "tiny.png")  # < the crop
    split = tmp_path / "split.txt"
    split.write_text("# validation\nset/p03.png\nset/p07.png\n")
    import pipeline.metrics.trunk_int8 as t8

    monkeypatch.setattr(t8, "write_int8", lambda net, root: (root / "m").mkdir(parents=True))
    gpu_kit.trim(repo)
    sizes = sorted((photos / f"p{i:02d}.png").stat().st_size for i in range(12))
    tree = sum(gpu_kit.travelling_bytes(repo).values())
    limit = tree + gpu_kit.MARGIN + sum(sizes[:5]) + 10  # room for about five photos
    m = gpu_kit.pack(repo, [str(tmp_path / "train")], str(split), limit=limit,
                     wheels=False, relay=False, min_side=48)
    kit = repo / ".gpu-kit"
    taken = sorted(p.name for p in (kit / "photos" / "set").iterdir())
    assert taken and "p03.png" not in taken and "p07.png" not in taken
    assert "tiny.png" not in taken
    room = limit - tree - gpu_kit.MARGIN
    used = sum((photos / n).stat().st_size for n in taken)
    left = [f"p{i:02d}.png" for i in range(12) if f"p{i:02d}.png" not in taken + ["p03.png",
                                                                                  "p07.png"]]
    assert used <= room and all((photos / n).stat().st_size > room - used for n in left)
    assert all((kit / "photos" / "set" / n).read_bytes() == (photos / n).read_bytes()
               for n in taken)  # the original files, not re-encoded
    assert m["photos"] == len(taken) and m["total"] <= limit
    assert json.loads((kit / "manifest.json").read_text())["photos"] == len(taken)
    assert "/.gpu-kit/" in (repo / ".git" / "info" / "exclude").read_text()
    assert _git(repo, "status", "--porcelain", "--untracked-files=all").count(".gpu-kit") == 0
    gpu_kit.restore(repo)


def _config(path, photos, cache, split, **extra):
    raw = {"codec": "refine", "model_config": "refine-latent-test", "model_id": path.stem,
           "sources": [str(photos)], "validation_split": str(split), "pair_cache": str(cache),
           "pair_crop": 32, "pair_variants": 1, "pair_crops": 2, "crop": 32, "batch_size": 4,
           "steps": 10_000, "lr": 1e-3, "rho": 0.0, "mse_weight": 1.0, "log_every": 2,
           "checkpoint_every": 1000, "lr_warmup_steps": 5, "lr_decay": "cosine",
           "lr_min_ratio": 0.1, **extra}
    path.write_text(yaml.safe_dump(raw))
    return path


#: Top-level packages of the lent machines' image (device/KINDS.md, 2026-11-17) a training
#: path could touch, with the kit's wheels (Pillow is there too; lpips is carried).
DEVICE_PACKAGES = {"torch", "torchgen", "functorch", "torchvision", "numpy", "PIL", "yaml",
                   "_yaml", "fsspec", "rich", "typer", "click", "tqdm", "triton", "sympy",
                   "mpmath", "networkx", "jinja2", "markupsafe", "filelock",
                   "typing_extensions", "pygments", "markdown_it", "mdurl", "packaging",
                   "psutil", "scipy", "onnx", "onnxruntime", "pandas", "lpips", "cuda",
                   "nvidia", "shellingham", "google", "dateutil", "six", "pytz"}
SITE = """
import sys
FARM = {farm!r}
sys.path[:] = [p for p in sys.path if "site-packages" not in p] + [FARM]
"""


def _device_like_site(tmp_path: Path) -> Path:
    """A folder whose sitecustomize drops this venv's site-packages from every Python that
    starts with it on PYTHONPATH, and puts back only the packages a lent machine has: what
    is missing there is missing here (``importlib.util.find_spec`` says None)."""
    import sysconfig

    purelib = Path(sysconfig.get_paths()["purelib"])
    farm = tmp_path / "farm"
    farm.mkdir()
    for entry in purelib.iterdir():
        top = entry.name.split(".")[0].split("-")[0]
        if top in DEVICE_PACKAGES or entry.name.endswith((".libs", ".dist-info")) or (
                entry.suffix == ".so" and top.lstrip("_") in DEVICE_PACKAGES):
            (farm / entry.name).symlink_to(entry)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE.format(farm=str(farm)))
    return site


def test_the_driver_builds_pairs_probes_plans_and_brings_relays_back(tmp_path):
    """The whole plan, in a Python that can import only what a lent machine has (so no
    CompressAI, zarr or Ray on the training path): every process loads the blocker."""
    import os

    photos = tmp_path / "photos" / "set"
    photos.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(smooth_image(48, 64, seed=i)).save(photos / f"p{i}.png")
    split = tmp_path / "split.txt"
    split.write_text("set/p3.png\n")
    cache = tmp_path / "pairs"
    a = _config(tmp_path / "a.yaml", photos.parent, cache, split)
    b = _config(tmp_path / "b.yaml", photos.parent, cache, split, pixel_weight=1.0,
                pixel_items=2, model_overrides={"channels": [12]})
    c = _config(tmp_path / "c.yaml", photos.parent, cache, split)
    (tmp_path / "c-parent").mkdir()  # exists, holds no checkpoint: c's probe fails
    c.write_text(c.read_text() + "init_from: c-parent\n")
    out = tmp_path / "out"
    site = _device_like_site(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), str(Path(__file__).resolve().parents[1])])}
    for missing, present in (("compressai", "torch"), ("zarr", "PIL"), ("ray", "yaml")):
        probe = subprocess.run([sys.executable, "-c", f"import {present}; import {missing}"],
                               env=env, capture_output=True, text=True)
        assert f"No module named '{missing}'" in probe.stderr  # the machine's view here
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.training.gpu_run", str(a), str(b), str(c), "--out",
         str(out), "--seconds", "45", "--save-margin", "4", "--device", "cpu", "--kit",
         str(tmp_path / "kit"), "--runs", str(tmp_path / "runs"), "--workers", "2",
         "--threads", "1", "--probe-steps", "6", "--bench-seconds", "2"],
        env=env, cwd=tmp_path, capture_output=True, text=True)
    # c fails (its init_from does not exist): a and b are still brought back, exit 1
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.startswith("error: c: ") and "init_from c-parent" in proc.stderr
    assert "Traceback" not in proc.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["a/metrics.csv", "a/relay.pt", "b/metrics.csv", "b/relay.pt",
                     "gpu_run.log"]
    for name in ("a", "b"):
        relay = torch.load(out / name / "relay.pt", weights_only=False)
        rows = list(csv.DictReader(open(out / name / "metrics.csv")))
        planned = yaml.safe_load((tmp_path / "runs" / name / "config.yaml").read_text())["steps"]
        assert 6 < relay["step"] <= planned < 10_000  # past the probe, to its plan
        assert relay["train_config"]["steps"] == planned  # the schedule ends with the run
        assert all(v.dtype in (torch.float16, torch.int64, torch.long) or not
                   v.is_floating_point() for v in relay["ema"].values())
        assert relay["step"] - 2 <= int(rows[-1]["step"]) <= relay["step"]  # log_every 2
    assert "pixel_mse" in open(out / "b" / "metrics.csv").readline()
    assert len(list(cache.glob("shard-*.npz"))) == len(list(cache.glob("latent-*.pt"))) == 1
    log = (out / "gpu_run.log").read_text()
    assert "probe a:" in log and "steps planned" in log
    assert "decode bench: {'photo': 'p" in log and "'standard_s': " in log  # a's model


def test_the_driver_refuses_configs_that_do_not_share_their_pairs(tmp_path, capsys):
    split = tmp_path / "split.txt"
    split.write_text("")
    a = _config(tmp_path / "a.yaml", tmp_path, tmp_path / "p1", split)
    b = _config(tmp_path / "b.yaml", tmp_path, tmp_path / "p2", split)
    assert gpu_run.main([str(a), str(b), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    assert "pair_cache differs" in capsys.readouterr().err


def test_preflight_names_what_would_fail_later(tmp_path, capsys):
    split = tmp_path / "split.txt"
    split.write_text("")
    (tmp_path / "photos").mkdir()
    a = _config(tmp_path / "a.yaml", tmp_path / "photos", tmp_path / "p", split,
                init_from=str(tmp_path / "gone"))
    assert gpu_run.main([str(a), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    assert f"init_from {tmp_path / 'gone'} does not exist" in capsys.readouterr().err
    b = _config(tmp_path / "b.yaml", tmp_path / "nophotos", tmp_path / "p", split)
    assert gpu_run.main([str(b), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    assert "nophotos does not exist (pack the kit)" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # nothing built


def test_outside_a_checkout_the_kit_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert gpu_kit.main(["size"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not inside a git checkout" in err
    assert err.count("\n") == 1


def test_the_device_command_trains_every_gpu_config_and_fits_the_tool():
    repo = Path(__file__).resolve().parents[1]
    cmd = gpu_kit.device_command(repo)
    assert len(cmd) <= 2000 and "--target /tmp/site .gpu-kit/wheels/*.whl" in cmd
    for p in sorted((repo / "configs" / "gpu").glob("*.yaml")):
        assert f"configs/gpu/{p.name}" in cmd


def test_every_gpu_config_is_a_refine_config_that_fits_the_kit():
    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/gpu/*.yaml"))
    assert configs
    cfgs = gpu_run._configs([str(c) for c in configs])
    for c in cfgs:
        assert c.sources == [".gpu-kit/photos"] and c.perceptual_trunk == "int8"
        assert c.pixel_rho == 0 or c.perceptual == "lpips-vgg"
    assert sys.version_info >= (3, 10)
