"""The embedded Ray is always our own: ``ray_session()`` without an address passes
``address="local"``, so a ``RAY_ADDRESS`` left in the environment (a stray cluster, or
nothing at all listening there) is not joined."""

from __future__ import annotations

import pytest

from jobs.cluster import ray_session


def test_embedded_ray_ignores_ray_address(monkeypatch):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray session of this process is already running (it would be reused)")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # nothing listens there
    with ray_session(num_cpus=1) as s:
        assert s.mode == "embedded"
        assert not s.address.endswith(":9"), s.address
        assert s.cpus == 1
    assert not ray.is_initialized()
