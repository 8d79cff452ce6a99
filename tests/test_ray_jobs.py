"""The Ray jobs on a local two-node cluster (``ray.cluster_utils.Cluster``, one per module):
archive a few dozen generated images, decode them all, rerun (writes nothing), kill an
encoder mid-job, crash a shard until the job gives up and rerun it, export at a tier, the
CLI; and the README's command on the embedded Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cdc import CDCCodec, describe
from jobs.cluster import quiet_env, use_loopback
from pipeline.archive import (
    EncodeOptions,
    encode_shard,
    open_or_create,
    plan_inputs,
    plan_shards,
)
from storage import Archive
from tests.conftest import smooth_image

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(48, 64), (64, 64), (80, 48)]  # 48x64 and 64x64 pad to the same shape (stacked)
N_IMAGES = 36
SHARD = 8
OPTS = EncodeOptions(batch_size=2, window=2)  # 4 progress events per shard


def _cli_app():
    from jobs.cli import app
    from jobs.ray_cli import register

    register(app)
    return app


# -- the README command on the embedded Ray (first: before the cluster is up) -------------
@pytest.mark.timeout(150)
def test_readme_command_embedded_ray(tmp_path: Path, weights_file: str):
    """`cdc archive samples out/demo.zarr && cdc get out/demo.zarr astronaut.png ...`: the
    archive job in a fresh process, where a local Ray starts and stops with the job; `get`
    needs no Ray."""
    launcher = ("from jobs.cli import app; from jobs.ray_cli import register; "
                "register(app); app()")
    env = {**os.environ, "CDC_CACHE_DIR": str(tmp_path / "cache")}
    url = str(tmp_path / "out" / "demo.zarr")
    r = subprocess.run([sys.executable, "-c", launcher, "archive", str(ROOT / "samples"), url,
                        "--model", weights_file, "--num-cpus", "1"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 (4 / 0)" in r.stdout and "embedded" in r.stdout
    png = tmp_path / "out" / "astronaut.png"
    r = CliRunner().invoke(_cli_app(), ["get", url, "astronaut.png", str(png), "--tier", "preview",
                                        "--model", weights_file, "--cache-dir",
                                        str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"astronaut.png -> {png}: 320x320, tier preview (steps 2, ")
    assert Image.open(png).size == Image.open(ROOT / "samples" / "astronaut.png").size


# -- the two-node cluster -----------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    quiet_env()
    use_loopback()  # before Ray resolves this node's address
    import ray
    from ray.cluster_utils import Cluster

    args = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024,
            "node_ip_address": "127.0.0.1"}
    c = Cluster(initialize_head=True, head_node_args={**args, "include_dashboard": False})
    c.add_node(**args)
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collection")
    for i in range(N_IMAGES):
        h, w = SIZES[i % len(SIZES)]
        sub = root / ("a" if i < N_IMAGES // 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(smooth_image(h, w, i)).save(sub / f"img{i:03d}.png")
    (root / "b" / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return root


def _job(images: Path, url: str, weights_file: str, **kw):
    from jobs.encode import ArchiveJobConfig

    return ArchiveJobConfig(src=str(images), url=url, model=weights_file, shard_size=SHARD,
                            options=OPTS, progress=False, **kw)


def _payloads(url: str) -> dict[str, bytes]:
    arch = Archive.open(url)
    return {k: arch[k].data for k in arch if arch.info(k).ok}


def _reference(images: Path, codec: CDCCodec, url: str, options: EncodeOptions) -> dict:
    """The same inputs encoded without Ray, in this process (one torch thread, like an
    actor): what every Ray run must reproduce bit for bit."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        items, _ = plan_inputs(str(images))
        arch, _ = open_or_create(url, codec, shard_size=SHARD)
        for plan in plan_shards(items, set(), set(), SHARD):
            list(encode_shard(codec, arch, plan, options=options))
    finally:
        torch.set_num_threads(old)
    return _payloads(url)


@pytest.fixture(scope="module")
def reference(images: Path, codec: CDCCodec, tmp_path_factory) -> dict[str, bytes]:
    """Bitstreams of the fault-injection runs' options (windows of 2)."""
    return _reference(images, codec, str(tmp_path_factory.mktemp("ref") / "ref.zarr"), OPTS)


@pytest.fixture(scope="module")
def cli_run(cluster, images: Path, weights_file: str, tmp_path_factory) -> dict:
    """`cdc archive` of the whole collection on the two-node cluster, once for the module:
    a clean run the other tests read (export) and compare with."""
    url = str(tmp_path_factory.mktemp("cli") / "all.zarr")
    r = CliRunner().invoke(_cli_app(), [
        "archive", str(images), url, "--model", weights_file, "--shard-size", str(SHARD),
        "--batch-size", "2", "--tier", "high:steps=3", "--json"])
    return {"url": url, "result": r, "payloads": _payloads(url) if Path(url).exists() else {}}


@pytest.mark.timeout(150)
def test_two_node_archive_decodes_and_rerun_writes_nothing(cli_run, images: Path,
                                                          weights_file: str, codec: CDCCodec,
                                                          tmp_path: Path):
    r = cli_run["result"]
    # the broken file: the job finishes everything else, names it, exits 1
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines() == [
        f"error: {images / 'b' / 'zz-broken.png'}: not an image file (unrecognised format)"]
    s = json.loads(r.stdout)
    assert s["ray"]["mode"] == "existing" and s["ray"]["actors"] == 2
    assert s["ray"]["nodes_used"] == 2, "both nodes should have encoded shards"
    assert s["shards"]["planned"] == 5 and s["shards"]["written"] == 5
    assert s["images"] == {"encoded": N_IMAGES + 1, "ok": N_IMAGES, "failed": 1}
    assert [f["key"] for f in s["failures"]] == ["b/zz-broken.png"]
    assert "not an image" in s["failures"][0]["error"] and not s["complete"]
    payloads = cli_run["payloads"]
    assert s["bytes_out"] == sum(len(v) for v in payloads.values())

    url = cli_run["url"]
    arch = Archive.open(url)
    arch.verify()
    assert arch.tiers["high"] == {"steps": 3, "gamma": 0.8, "seed": 0}
    assert len(arch) == N_IMAGES + 1 and [i.key for i in arch.failed()] == ["b/zz-broken.png"]
    assert "not an image" in arch.info("b/zz-broken.png").error
    # every image decodes, at its original size; the bitstreams are exactly what the same
    # stages give without Ray
    keys = sorted(payloads)
    assert len(keys) == N_IMAGES
    imgs = codec.decompress_batch([payloads[k] for k in keys], steps=2)
    for k, img in zip(keys, imgs):
        src = Image.open(images / k)
        assert img.size == src.size and describe(payloads[k])["width"] == src.width
    assert payloads == _reference(images, codec, str(tmp_path / "no-ray.zarr"),
                                  EncodeOptions(batch_size=2))

    # a rerun plans nothing, starts no Ray and changes no manifest entry
    manifests = {s_: arch.manifest(s_) for s_ in arch.completed_shards()}
    r = CliRunner().invoke(_cli_app(), ["archive", str(images), url, "--model", weights_file,
                                        "--json"])
    again = json.loads(r.stdout)
    assert again["shards"]["planned"] == 0 and again["images"]["encoded"] == 0
    assert again["already_archived"] == N_IMAGES + 1
    assert again["ray"]["mode"].startswith("not started")
    arch = Archive.open(url)
    assert {s_: arch.manifest(s_) for s_ in arch.completed_shards()} == manifests
    assert arch.claims() == {}


@pytest.mark.timeout(150)
def test_encoder_killed_mid_job(reference, images: Path, weights_file: str, tmp_path: Path):
    """SIGKILL an encoder's process after its first batch: the shard is re-done by the
    restarted actor, and the archive ends bit-identical to the clean run."""
    from jobs.encode import run_archive_job

    killed: list[int] = []

    def kill_first(ev):
        if ev["type"] == "progress" and not killed:
            killed.append(ev["pid"])
            os.kill(ev["pid"], signal.SIGKILL)

    url = str(tmp_path / "killed.zarr")
    s = run_archive_job(_job(images, url, weights_file), on_event=kill_first)
    assert killed and s["shards"]["retries"] >= 1, s["shards"]
    assert s["shards"]["failed"] == [], s["shards"]["failed"]
    assert s["shards"]["written"] == 5
    assert s["images"]["ok"] == N_IMAGES  # the lost attempt's partial counts were undone
    assert _payloads(url) == reference
    arch = Archive.open(url)
    arch.verify()
    assert arch.claims() == {}


@pytest.mark.timeout(150)
def test_crashing_shard_fails_then_rerun_completes(reference, images: Path, weights_file: str,
                                                    tmp_path: Path):
    from jobs.encode import run_archive_job

    def die_on_shard_1(plan):  # defined here so Ray pickles it by value
        if plan.shard == 1:
            os._exit(1)  # the worker process dies just before committing shard 1

    url = str(tmp_path / "crash.zarr")
    # inflight=1: no other shard shares the dying worker (it would be charged an attempt)
    s = run_archive_job(_job(images, url, weights_file, shard_attempts=2, inflight=1),
                        before_commit=die_on_shard_1)
    assert len(s["shards"]["failed"]) == 1, [f["error"] for f in s["shards"]["failed"]]
    (failed,) = s["shards"]["failed"]
    assert failed["shard"] == 1 and failed["attempts"] == 2
    assert s["shards"]["written"] == 4
    missing = [f for f in s["failures"] if f["error"].startswith("not archived")]
    assert len(missing) == SHARD
    # A writer that died holding shard 1's claim (as a crash mid-commit would leave it).
    subprocess.run([sys.executable, "-c",
                    f"from storage import Archive; Archive.open({url!r}).writer(1).open()"],
                   check=True, cwd=ROOT, timeout=60)
    assert list(Archive.open(url).claims()) == [1]

    again = run_archive_job(_job(images, url, weights_file))
    assert again["shards"]["planned"] == 1 and again["shards"]["written"] == 1
    assert [f["key"] for f in again["failures"]] == ["b/zz-broken.png"]
    assert _payloads(url) == reference
    arch = Archive.open(url)
    arch.verify()
    assert arch.claims() == {} and sorted(arch.completed_shards()) == [0, 1, 2, 3, 4]


@pytest.mark.timeout(150)
def test_export_at_a_tier(cli_run, tmp_path: Path, weights_file: str, codec: CDCCodec):
    """`cdc export` on the two-node cluster; resumable; failed/missing keys and bad tiers."""
    from jobs.export import ExportJobConfig, run_export_job

    url, dest, cache = cli_run["url"], tmp_path / "out", str(tmp_path / "cache")
    runner, app = CliRunner(), _cli_app()
    r = runner.invoke(app, ["export", url, str(dest), "--tier", "preview", "--model", weights_file,
                            "--prefix", "a/img00", "--json", "--cache-dir", cache])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    # a/img000-007 are shard 0, a/img008-009 shard 1: two chunks, one per actor
    assert s["complete"] and s["exported"] == 10 and s["ray"]["actors"] == 2
    assert s["settings"] == {"steps": 2, "gamma": 0.0, "seed": 0}
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png"))
    assert files == [f"a/img{i:03d}.png" for i in range(10)]
    for k in (files[0], files[-1]):
        ref = codec.decompress(cli_run["payloads"][k], steps=2, gamma=0.0, seed=0)
        assert np.array_equal(np.asarray(Image.open(dest / k)), np.asarray(ref))
    # resumable: existing outputs are skipped; a failed record and a missing key are
    # reported, nothing is decoded (Ray is not even started)
    s = run_export_job(ExportJobConfig(url=url, dest=str(dest), tier="preview",
                                       model=weights_file, keys=files[:3] + ["b/zz-broken.png",
                                                                             "nope.png"],
                                       cache_dir=cache, progress=False))
    assert s["skipped_existing"] == 3 and s["exported"] == 0 and not s["complete"]
    assert [f["key"] for f in s["failures"]] == ["b/zz-broken.png", "nope.png"]
    assert s["ray"]["mode"].startswith("not started")
    r = runner.invoke(app, ["export", url, str(dest), "--tier", "nope", "--model", weights_file])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        f"error: {url}: unknown tier 'nope' (tiers: high, preview, standard)"]
    r = runner.invoke(app, ["export", url, str(dest), "--format", "gif", "--model", weights_file])
    assert r.exit_code == 2 and "gif" in r.stderr


@pytest.mark.timeout(60)
def test_cli_archive_errors(cluster, images: Path, weights_file: str, tmp_path: Path):
    """Problems found before any work: one line naming the file, exit 1 (input) or 2 (usage),
    and nothing created."""
    runner, app = CliRunner(), _cli_app()
    url = tmp_path / "x.zarr"
    cases = [
        (["archive", str(tmp_path / "nothing"), str(url), "--model", weights_file], 1,
         str(tmp_path / "nothing")),
        (["archive", str(images / "a"), str(url), "--model", str(tmp_path / "no.pt")], 1,
         str(tmp_path / "no.pt")),
        (["archive", str(images / "a"), str(url), "--model", weights_file,
          "--tier", "high:steps=0"], 2, "steps"),
        (["archive", str(images / "a"), str(url), "--model", weights_file,
          "--tier", "bad tier:steps=1,gamma=0"], 2, "bad tier name"),
        # a weights file has one rate: --rate cannot choose another model for it
        (["archive", str(images / "a"), str(url), "--model", weights_file, "--rate", "0.1"], 1,
         "not a shipped model"),
        # a ladder (one model per rate) refuses a rate none of its rungs reaches (the default
        # model, refine-avif, meets any rate itself: named here is the lcdc ladder)
        (["archive", str(images / "a"), str(url), "--model", "lcdc-q2", "--rate", "3"], 1,
         "no shipped cdc model is within"),
        (["archive", str(images / "a"), str(url), "--rate", "0"], 1, "positive"),
        # a PSNR target needs an encoder that searches (refine); in range; a positive cap
        (["archive", str(images / "a"), str(url), "--model", weights_file, "--psnr", "30"], 1,
         "cannot aim at a PSNR"),
        (["archive", str(images / "a"), str(url), "--psnr", "90"], 1, "15..60 dB"),
        (["archive", str(images / "a"), str(url), "--psnr", "30", "--rate", "-1"], 1,
         "positive"),
    ]
    for argv, code, text in cases:
        r = runner.invoke(app, argv)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == code and len(lines) == 1, (argv, r.output)
        assert lines[0].startswith("error: ") and text in lines[0], (argv, lines)
        assert not url.exists()


@pytest.mark.timeout(150)
def test_capture_metadata_through_archive_and_export(cluster, tmp_path: Path, weights_file: str):
    """`cdc archive` keeps a photo's EXIF on the cluster; `cdc export` writes it into JPEG
    outputs, and `--metadata no-gps` drops the position."""
    from pipeline.photo_metadata import apply_policy, read_metadata
    from tests.test_photo_metadata import CAMERA, _camera_exif, _jpeg

    src, url = tmp_path / "photos", str(tmp_path / "m.zarr")
    _jpeg(src / "camera.jpg", exif=_camera_exif().tobytes())
    _jpeg(src / "plain.jpg", seed=1)
    os.utime(src / "camera.jpg", (1_500_000_000, 1_500_000_000))
    for other in ("IMG_0003.CR2", "IMG_0004.CR2", "clip.MOV", ".DS_Store", "Thumbs.db"):
        (src / other).write_bytes(b"not a photo Pillow reads")
    runner, app = CliRunner(), _cli_app()
    r = runner.invoke(app, ["archive", str(src), url, "--model", weights_file, "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["not_images"] == {"files": 3, "by_extension": {".cr2": 2, ".mov": 1}}
    r = runner.invoke(app, ["archive", str(src), url, "--model", weights_file])  # a no-op
    assert r.exit_code == 0 and r.stderr.strip().splitlines() == [
        f"warning: {src}: files that are not images were not archived: 3 (.cr2 2, .mov 1)"]
    assert "not images (not archived)" in r.stdout
    arch = Archive.open(url)
    assert s["metadata"] == {"policy": "keep", "images": 1, "bytes": sum(
        len(json.dumps(arch.metadata(k), sort_keys=True, separators=(",", ":")))
        for k in ("camera.jpg", "plain.jpg"))}
    for fmt, policy, want in (("jpeg", "keep", CAMERA),
                              ("png", "no-gps", apply_policy(CAMERA, "no-gps"))):
        dest = tmp_path / f"out-{fmt}"
        r = runner.invoke(app, ["export", url, str(dest), "--tier", "preview", "--format", fmt,
                                "--model", weights_file, "--metadata", policy, "--json",
                                "--no-cache"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["metadata"] == policy
        ext = "jpg" if fmt == "jpeg" else fmt
        assert read_metadata(Image.open(dest / f"camera.{ext}")) == want
        assert read_metadata(Image.open(dest / f"plain.{ext}")) == {}
        assert (dest / f"camera.{ext}").stat().st_mtime == 1_500_000_000  # as its source
    # only the photos taken in a date range (plain.jpg has no capture date)
    taken = CAMERA["DateTimeOriginal"][:4]
    dest = tmp_path / "out-dated"
    r = runner.invoke(app, ["export", url, str(dest), "--tier", "preview", "--model",
                            weights_file, "--taken-from", taken, "--taken-to", taken])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in dest.iterdir()) == ["camera.png"]
    r = runner.invoke(app, ["export", url, str(dest), "--taken-from", "last year"])
    assert r.exit_code == 2 and r.output.startswith("error: --taken-from 'last year'")


def _photos(tmp_path: Path, n: int, seed: int) -> Path:
    """``src/p0.png`` … and a broken ``src/q-broken.png``."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        Image.fromarray(smooth_image(48, 64, seed + i)).save(src / f"p{i}.png")
    (src / "q-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return src


def test_retry_failed_keeps_records_whose_source_is_gone(cluster, tmp_path: Path,
                                                         weights_file: str):
    """--retry-failed re-encodes the failed images only: an ok record of the same shard
    whose source file was deleted after archiving stays (before 2026-12-07 its whole shard
    was discarded and re-encoded from the source, so such a record was lost)."""
    from jobs.encode import run_archive_job

    src = _photos(tmp_path, 4, seed=100)
    url = str(tmp_path / "retry.zarr")
    first = run_archive_job(_job(src, url, weights_file))
    assert [f["key"] for f in first["failures"]] == ["q-broken.png"]
    kept = _payloads(url)
    (src / "p1.png").unlink()  # archived, then deleted from the source
    Image.fromarray(smooth_image(48, 64, 7)).save(src / "q-broken.png")  # fixed
    again = run_archive_job(_job(src, url, weights_file, retry_failed=True))
    assert again["retry_failed"] == {"images": 1, "shards_replaced": 1}
    assert again["failures"] == [] and again["images"]["encoded"] == 1
    now = _payloads(url)
    assert sorted(now) == ["p0.png", "p1.png", "p2.png", "p3.png", "q-broken.png"]
    assert all(now[k] == kept[k] for k in kept if k != "q-broken.png")
    arch = Archive.open(url)
    arch.verify()
    assert not arch.failed() and arch.pending_removals() == []


def test_update_re_encodes_photos_edited_at_the_source(cluster, tmp_path: Path,
                                                      weights_file: str):
    """A photo edited after archiving is reported on the next run and re-encoded with
    --update; an edit that broke the file keeps the archived version and fails the job."""
    from jobs.encode import run_archive_job

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(48, 64, 200 + i)).save(src / f"p{i}.png")
    url = str(tmp_path / "update.zarr")
    run_archive_job(_job(src, url, weights_file))
    before = _payloads(url)
    Image.fromarray(smooth_image(64, 48, 9)).save(src / "p1.png")  # cropped and retouched
    (src / "p2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # an edit gone wrong
    for name, t in (("p1.png", 1_700_000_000), ("p2.png", 1_700_000_100)):
        os.utime(src / name, (t, t))
    seen = run_archive_job(_job(src, url, weights_file))
    assert seen["changed_sources"] == {"keys": ["p1.png", "p2.png"], "updated": 0}
    assert seen["shards"]["planned"] == 0 and _payloads(url) == before
    done = run_archive_job(_job(src, url, weights_file, update=True))
    assert done["changed_sources"]["updated"] == 1
    assert [f["key"] for f in done["failures"]] == ["p2.png"]
    assert "the archived version is kept" in done["failures"][0]["error"]
    after = _payloads(url)
    assert after["p0.png"] == before["p0.png"] and after["p2.png"] == before["p2.png"]
    assert after["p1.png"] != before["p1.png"]
    arch = Archive.open(url)
    assert (arch.info("p1.png").width, arch.info("p1.png").height) == (48, 64)
    assert arch.metadata("p1.png")["FileModified"] == "2023-11-14T22:13:20Z"
    again = run_archive_job(_job(src, url, weights_file))
    assert again["changed_sources"]["keys"] == ["p2.png"]  # still broken, still reported


def test_dry_run_plans_and_writes_nothing(cluster, tmp_path: Path, weights_file: str):
    """--dry-run: what a run would do (new, edited, failed images; shards), no archive
    created, nothing written to an existing one, no Ray."""
    from jobs.encode import run_archive_job

    src = _photos(tmp_path, 3, seed=300)
    url = str(tmp_path / "dry.zarr")
    first = run_archive_job(_job(src, url, weights_file, dry_run=True))
    assert first["dry_run"] and first["created"] and not (tmp_path / "dry.zarr").exists()
    assert first["images"]["to_encode"] == 4 and first["shards"]["planned"] == 1
    run_archive_job(_job(src, url, weights_file))
    store = {p: p.read_bytes() for p in (tmp_path / "dry.zarr").rglob("*") if p.is_file()}
    Image.fromarray(smooth_image(48, 64, 9)).save(src / "p1.png")
    os.utime(src / "p1.png", (1_700_000_000, 1_700_000_000))
    Image.fromarray(smooth_image(48, 64, 10)).save(src / "p9.png")  # new
    Image.fromarray(smooth_image(48, 64, 11)).save(src / "q-broken.png")  # fixed
    plan = run_archive_job(_job(src, url, weights_file, dry_run=True, update=True,
                                retry_failed=True))
    assert not plan["created"] and plan["already_archived"] == 2
    assert plan["changed_sources"] == {"keys": ["p1.png"], "updated": 1}
    assert plan["retry_failed"] == {"images": 1, "shards_replaced": 1}
    assert plan["images"]["to_encode"] == 3  # p1 (edited), p9 (new), q-broken (retried)
    assert "ray" not in plan and plan["failures"] == []
    after = {p: p.read_bytes() for p in (tmp_path / "dry.zarr").rglob("*") if p.is_file()}
    assert after == store  # not one byte written
    r = CliRunner().invoke(_cli_app(), ["archive", str(src), url, "--model", weights_file,
                                        "--dry-run", "--update"])
    assert r.exit_code == 0, r.output
    assert "nothing (--dry-run)" in r.output and "images to encode" in r.output


def test_archive_to_a_psnr_target(cluster, tmp_path: Path):
    """`cdc archive --psnr DB` with a refine model: every base layer reaches the target, a
    detailed photo gets more bytes than a smooth one, the target is in the summary and in
    the archive's creation settings (`cdc info`)."""
    from tests.tiny_refine import refine_bytes
    from zoo import codec_from_bytes

    weights = tmp_path / "refine.pt"
    weights.write_bytes(refine_bytes(0))
    src = tmp_path / "src"
    src.mkdir()
    smooth = smooth_image(48, 64, 5)
    grain = np.random.default_rng(1).normal(0, 20, (48, 64, 1))
    busy = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    Image.fromarray(smooth).save(src / "smooth.png")
    Image.fromarray(busy).save(src / "busy.png")
    url = str(tmp_path / "psnr.zarr")
    r = CliRunner().invoke(_cli_app(), ["archive", str(src), url, "--model", str(weights),
                                        "--psnr", "28", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["psnr"] == {"target_db": 28.0}
    arch = Archive.open(url)
    assert arch.created["psnr_db"] == 28.0
    for key, img in (("smooth.png", smooth), ("busy.png", busy)):
        base = np.asarray(codec_from_bytes(refine_bytes(0), "t").decompress(
            arch[key].data, steps=0)).astype(float)
        assert 10 * np.log10(255 ** 2 / ((base - img) ** 2).mean()) >= 28 - 0.01
    assert len(arch["busy.png"].data) > 1.5 * len(arch["smooth.png"].data)
    info = CliRunner().invoke(_cli_app(), ["info", url])
    assert "psnr_db 28.0" in info.output


def test_copies_of_one_photo_are_reported(cluster, tmp_path: Path, weights_file: str):
    """A run that archives the same file under two names says so (each is archived, a key
    is a path); `cdc ls --duplicates` then lists the redundant copy for `cdc rm --keys`."""
    src = tmp_path / "src"
    (src / "backup").mkdir(parents=True)
    Image.fromarray(smooth_image(48, 64, 1)).save(src / "a.png")
    (src / "backup" / "a.png").write_bytes((src / "a.png").read_bytes())
    Image.fromarray(smooth_image(48, 64, 2)).save(src / "b.png")
    url = str(tmp_path / "dup.zarr")
    r = CliRunner().invoke(_cli_app(), ["archive", str(src), url, "--model", weights_file])
    assert r.exit_code == 0, r.output
    assert "1 photo(s) have the same bytes as another of this run (e.g. backup/a.png = a.png)" \
        in r.stderr
    assert "same bytes as another of this run" in r.stdout  # the summary's row
    assert len(Archive.open(url)) == 3
    ls = CliRunner().invoke(_cli_app(), ["ls", url, "--duplicates"])
    assert ls.exit_code == 0 and ls.output.splitlines() == ["backup/a.png"]
