"""`cdc archive/export --address` on a real cluster started by the `ray` CLI with token
authentication (tests/ray_cli_cluster.py: `ray start --head`, then `ray start --address`
with a logical GPU; loopback, own temp dir and ports, torn down even when the test fails).
The client has the token only in `RAY_AUTH_TOKEN_PATH`, as a user copying it would.

In `.ci/run`: 92 s on the 2-core VM with a training run holding one core (load average
2-3); 212-227 s, and once a timeout, under load 7-12 (docs/jobs.md, Tests)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from storage import Archive
from tests.conftest import smooth_image
from tests.ray_cli_cluster import RayCliCluster, nice15

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = "from jobs.cli import app; from jobs.ray_cli import register; register(app); app()"


def _cdc(env: dict[str, str], *args: str) -> subprocess.Popen:
    """``cdc ARGS`` in a subprocess (at nice 15); :func:`_wait` collects it."""
    return subprocess.Popen([*nice15(), sys.executable, "-c", LAUNCHER, *args], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen) -> tuple[int, str, list[str]]:
    """(exit code, stdout, stderr lines) of a :func:`_cdc`."""
    t = time.monotonic()
    out, err = proc.communicate(timeout=400)
    print(f"cdc {' '.join(proc.args[6:])}: {time.monotonic() - t:.1f} s", flush=True)
    return proc.returncode, out, err.splitlines()


@pytest.mark.timeout(900)
def test_archive_and_export_on_a_ray_cli_cluster(tmp_path: Path, weights_file: str, codec):
    from jobs.encode import ArchiveJobConfig, run_archive_job

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(8):
        Image.fromarray(smooth_image(48, 64, i)).save(imgs / f"img{i}.png")
    url, dest = str(tmp_path / "a.zarr"), tmp_path / "out"
    job = ["archive", str(imgs), url, "-m", weights_file, "--shard-size", "4", "--json"]
    with RayCliCluster(tmp_path / "ray") as cluster:
        cluster.start_node()  # the head: 1 CPU, no GPU
        env, addr = {**cluster.env(), "CDC_CACHE_DIR": str(tmp_path / "cache")}, cluster.address
        # no token on this side (no RAY_AUTH_TOKEN*, a HOME without ~/.ray/auth_token)
        no_token = {**{k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"},
                    "HOME": str(tmp_path / "home")}
        code, _, err = _wait(_cdc(no_token, *job, "--address", addr))
        assert code == 1 and err == [
            f"error: cannot join the Ray cluster at {addr}: it uses token authentication and "
            "no token is set here; copy the head node's token (`ray get-auth-token` there) to "
            "~/.ray/auth_token on this machine, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"]
        assert not Path(url).exists()
        # GPUs asked of a cluster without any: one line, not actors pending forever
        code, _, err = _wait(_cdc(env, *job[:2], str(tmp_path / "x.zarr"), *job[3:],
                                  "--address", addr, "--gpus-per-actor", "1"))
        assert code == 1 and err == [
            "error: no node of the Ray cluster has 1 CPU and 1 GPU for an actor "
            "(--cpus-per-actor, --gpus-per-actor; nodes: 1 CPU 0 GPU); start a node with GPUs "
            "(`ray start --address ... --num-gpus N`) or use --gpus-per-actor 0"], err

        cluster.start_node(gpus=1)  # `ray start --address`: 1 CPU and a logical GPU
        code, out, err = _wait(_cdc(env, *job, "--address", addr, "--gpus-per-actor", "0"))
        assert code == 0, err
        s = json.loads(out)
        assert s["ray"]["mode"] == "joined" and s["ray"]["nodes_used"] == 2
        assert s["images"] == {"encoded": 8, "ok": 8, "failed": 0}
        nodes = {p["node"] for p in s["ray"]["placement"]}
        assert len(nodes) == 2 and all(p["gpu_ids"] == [] for p in s["ray"]["placement"])
        arch = Archive.open(url)
        manifests = {k: arch.manifest(k) for k in arch.completed_shards()}
        # the rerun writes nothing (and starts no Ray)
        s = run_archive_job(ArchiveJobConfig(src=str(imgs), url=url, model=weights_file,
                                             progress=False))
        assert s["images"]["encoded"] == 0 and s["shards"]["planned"] == 0
        arch = Archive.open(url)
        assert {k: arch.manifest(k) for k in arch.completed_shards()} == manifests
        # at once: `cdc export` on the head's CPU, and `cdc archive --gpus-per-actor 1`,
        # whose actor lands on the GPU node, its device from what Ray assigned (cuda, or
        # cpu for a logical GPU on a machine without CUDA)
        export = _cdc(env, "export", url, str(dest), "--tier", "preview", "-m", weights_file,
                      "--address", addr, "--gpus-per-actor", "0", "--actors", "1", "--json")
        gpu = _cdc(env, *job[:2], str(tmp_path / "g.zarr"), *job[3:], "--address", addr,
                   "--gpus-per-actor", "1")
        (code, out, err), (gcode, gout, gerr) = _wait(export), _wait(gpu)
        assert code == 0 and json.loads(out)["exported"] == 8, err
        assert gcode == 0, gerr
        (p,) = json.loads(gout)["ray"]["placement"]
        assert p["node"] in nodes and p["gpu_ids"] == ["0"]
        assert p["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    # every record decoded as the codec decodes it here (one thread, a shard per batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        keys = sorted(arch.keys())
        for shard in (keys[:4], keys[4:]):
            refs = codec.decompress_batch([arch[k].data for k in shard], steps=2, gamma=0.0,
                                          seeds=0)
            for k, ref in zip(shard, refs):
                assert np.array_equal(np.asarray(Image.open(dest / k)), np.asarray(ref)), k
    finally:
        torch.set_num_threads(threads)


@pytest.mark.timeout(120)
def test_join_problems_found_before_ray_are_one_line(tmp_path: Path, weights_file: str,
                                                      monkeypatch):
    """No cluster needed: nothing listening at --address, an unreadable token file. One
    line each, exit 1, no archive created, before Ray is touched."""
    from typer.testing import CliRunner

    from jobs.cli import app
    from jobs.ray_cli import register

    register(app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = s.getsockname()[1]
        addr, url = f"127.0.0.1:{port}", tmp_path / "a.zarr"
        job = ["archive", str(ROOT / "samples"), str(url), "-m", weights_file, "--address", addr]
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # leave this process's Ray config be
        r = CliRunner().invoke(app, job)
        assert r.exit_code == 1 and r.stderr.splitlines() == [
            f"error: cannot join the Ray cluster at {addr}: connection refused; start it there "
            f"with `ray start --head --port {port}`, or check --address (the head's IP and the "
            "port `ray start --head` printed) and the firewall"]
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no-token"))
        r = CliRunner().invoke(app, job)
        assert r.exit_code == 1 and r.stderr.splitlines() == [
            f"error: RAY_AUTH_TOKEN_PATH={tmp_path / 'no-token'}: cannot read the Ray auth token "
            "(No such file or directory)"]
    assert not url.exists()
