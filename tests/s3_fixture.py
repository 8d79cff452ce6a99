"""pytest fixtures for a real S3 server: Ceph's RADOS gateway on 127.0.0.1.

moto is a mock; these tests want real S3 semantics (conditional PUTs, ranged GETs,
listing). ``s3_server`` (session scope) starts ``scripts/s3-server`` on free loopback
ports in a fresh directory and stops it at the end; it *skips* only when the Ceph
packages are missing, and fails loudly when they are installed but do not start.
Set ``CDC_S3_ENDPOINT`` (+ ``CDC_S3_ACCESS_KEY``/``CDC_S3_SECRET_KEY``) to reuse a
gateway that is already running on 127.0.0.1 (e.g. ``scripts/s3-server start``).

Enable with, in tests/conftest.py:  ``from s3_fixture import s3_server, s3_url  # noqa: F401``
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "s3-server"
CEPH_TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
APT_HINT = "apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this server (no region: RGW rejects us-east-1 mkdir)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint},
        }

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)

    def new_bucket(self, prefix: str = "cdc-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.filesystem().mkdir(name)
        return name


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    endpoint = os.environ.get("CDC_S3_ENDPOINT")
    if endpoint:
        host = urlparse(endpoint).hostname
        if host not in ("127.0.0.1", "localhost"):
            pytest.fail(f"CDC_S3_ENDPOINT={endpoint}: the S3 tests only talk to 127.0.0.1")
        yield S3Server(
            endpoint,
            os.environ.get("CDC_S3_ACCESS_KEY", "cdc-test"),
            os.environ.get("CDC_S3_SECRET_KEY", "cdc-test-secret"),
        )
        return
    missing = [t for t in CEPH_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"no Ceph RADOS gateway for the S3 tests (missing {', '.join(missing)}); "
            f"install with: {APT_HINT}"
        )
    # Short path: Ceph's admin sockets must fit in sun_path (108 bytes).
    workdir = tempfile.mkdtemp(prefix="cdc-s3-", dir="/tmp")
    env = {**os.environ, "CDC_S3_PORT": str(_free_port()), "CDC_S3_MON_PORT": str(_free_port())}
    try:
        proc = subprocess.run(
            [str(SCRIPT), "start", workdir],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        subprocess.run([str(SCRIPT), "stop", workdir], check=False, capture_output=True, timeout=60)
        pytest.fail(f"scripts/s3-server start timed out: {e.stderr}")
    if proc.returncode != 0:
        subprocess.run([str(SCRIPT), "stop", workdir], check=False, capture_output=True, timeout=60)
        pytest.fail(f"scripts/s3-server start failed (rc {proc.returncode}):\n{proc.stderr}")
    cfg = _parse_env(proc.stdout)
    try:
        yield S3Server(cfg["CDC_S3_ENDPOINT"], cfg["CDC_S3_ACCESS_KEY"], cfg["CDC_S3_SECRET_KEY"])
    finally:
        subprocess.run([str(SCRIPT), "stop", workdir], check=False, capture_output=True, timeout=60)


@pytest.fixture
def s3_url(s3_server: S3Server) -> tuple[str, dict[str, Any]]:
    """A fresh, empty ``s3://bucket/archive`` URL and its storage_options."""
    bucket = s3_server.new_bucket()
    return f"s3://{bucket}/archive", s3_server.storage_options
