"""Helpers for the tests (and scripts) that talk to `cdc serve` over HTTP: requests, a
free loopback port, a small generated archive, and `cdc serve` itself in a subprocess.

Importable without pytest or Ray (scripts/gallery-screenshot uses it on samples/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def http_get(url: str, timeout: float = 60, headers: Mapping[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers with lower-case names, body)``; HTTP errors are answers too."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TAKEN = {"DateTimeOriginal": "2021:07:04 18:22:10", "OffsetTimeOriginal": "+02:00",
         "GPSLatitudeRef": "N", "GPSLatitude": [[48, 1], [51, 1], [2409, 100]]}


def generated_archive(src: Path, url: str, codec: Any, n: int, *, height: int = 48,
                      width: int = 64, tiers: Mapping[str, Mapping[str, Any]] | None = None,
                      shard_size: int = 16, broken: bool = True) -> str:
    """``n`` generated images ``img000.png``… (plus ``zz-broken.png``, not an image, when
    ``broken``) in ``src``, archived with ``codec`` at ``url``; returns ``url``."""
    from PIL import Image

    from pipeline.archive import encode_shard, open_or_create, plan_inputs, plan_shards
    from pipeline.photo_metadata import exif_bytes
    from tests.conftest import smooth_image

    src.mkdir(parents=True, exist_ok=True)
    for i in range(n):  # img001 carries a capture date and position (the listing's "taken")
        exif = b"Exif\x00\x00" + exif_bytes(TAKEN) if i == 1 else b""
        Image.fromarray(smooth_image(height, width, i)).save(src / f"img{i:03d}.png", exif=exif)
    if broken:
        (src / "zz-broken.png").write_bytes(b"not a png")
    items, _ = plan_inputs(str(src))
    arch, _ = open_or_create(url, codec, shard_size=shard_size, tiers=tiers)
    for plan in plan_shards(items, set(), set(), shard_size):
        list(encode_shard(codec, arch, plan))
    return url


class CdcServe:
    """``cdc serve ARCHIVE`` in a subprocess on 127.0.0.1 and a free port, as a context
    manager yielding its base URL once ``/healthz`` answers; stopped with SIGTERM (as
    Ctrl-C would), killed if it does not stop. Its output goes to ``log``."""

    def __init__(self, archive: str, *, model: str | None = None, cache_dir: str | None = None,
                 args: list[str] | None = None, log: Path | None = None,
                 start_timeout_s: float = 240) -> None:
        self.archive, self.model, self.cache_dir = archive, model, cache_dir
        self.args = list(args or [])
        self.log_path = log or Path(tempfile.mkstemp(prefix="cdc-serve-", suffix=".log")[1])
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def command(self, port: int) -> list[str]:
        cmd = [sys.executable, "-m", "jobs.cli", "serve", self.archive, "--host", "127.0.0.1",
               "--port", str(port), "--num-cpus", "2"]
        if self.model:
            cmd += ["--model", self.model]
        if self.cache_dir:
            cmd += ["--cache-dir", self.cache_dir]
        return cmd + self.args

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> str:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(port), cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"cdc serve exited with {self.proc.returncode}:\n"
                                       f"{self.log_tail()}")
                try:
                    if http_get(f"{self.url}/healthz", timeout=5)[0] == 200:
                        return self.url
                except OSError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cdc serve did not answer within "
                                       f"{self.start_timeout_s:.0f} s:\n{self.log_tail()}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # serve.shutdown() and Ray's, as on Ctrl-C
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __exit__(self, *exc: Any) -> None:
        self.stop()
