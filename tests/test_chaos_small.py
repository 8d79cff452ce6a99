"""A tiny run of the chaos benchmark (bench/bench_chaos.py): a 40-image archive job on the
embedded Ray, once clean and once with its encoder SIGKILLed as soon as it starts working
(the benchmark's Killer); the killed run ends with every record byte-identical to the
clean run's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import make_weights

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.bench_chaos import chaos_run, compare, digests, make_images, run_job  # noqa: E402

N = 40


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_encoder_loses_no_image(tmp_path: Path):
    ray = pytest.importorskip("ray")
    from jobs.cluster import quiet_env, use_loopback

    src = tmp_path / "images"
    make_images(src, N, 32, 32)
    weights = tmp_path / "cdc-test.pt"
    weights.write_bytes(make_weights(0))
    job = {"actors": 1, "shard_size": 8, "batch_size": 2}
    quiet_env()
    use_loopback()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024 * 1024, _node_ip_address="127.0.0.1")
    try:
        clean = run_job(src, str(tmp_path / "clean.zarr"), str(weights), **job)
        assert clean["complete"] and clean["images"]["ok"] == N
        c = chaos_run(src, str(tmp_path / "chaos.zarr"), str(weights), kill_every=0.01,
                      max_kills=1, reruns=2, **job)
    finally:
        ray.shutdown()
    assert len(c["kills"]) == 1 and c["retries"] >= 1 and c["complete"]
    cmp = compare(digests(str(tmp_path / "clean.zarr")), digests(str(tmp_path / "chaos.zarr")),
                  N)
    assert cmp["clean_records"] == N and cmp["lost"] == 0 and cmp["extra"] == 0, cmp
