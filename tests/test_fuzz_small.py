"""A small run of the fuzz benchmark (bench/bench_fuzz.py): a few hundred mutated and
crafted streams of the shipped models' fixture streams, each decoded in a capped worker
process; none may crash, hang or raise anything but a typed ``CodecError``. And the pool
itself: a worker that dies, hangs or raises is counted as such (and replaced)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.bench_fuzz import (  # noqa: E402
    BAD,
    KINDS,
    MODELS,
    SELFTEST,
    Pool,
    Result,
    fuzz_cases,
    report,
    run_fuzz,
)

FIXTURES = Path(__file__).parent / "fixtures" / "streams"
N = 240  # 10 per model and kind


@pytest.fixture(scope="module")
def bases() -> dict[str, list[bytes]]:
    return {m: [(FIXTURES / f"{m}-{v}.cdc").read_bytes() for v in "ab"] for m in MODELS}


def test_cases_are_reproducible(bases):
    a = list(fuzz_cases(bases, 480, seed=3))
    assert a == list(fuzz_cases(bases, 480, seed=3)) != list(fuzz_cases(bases, 480, seed=4))
    assert {(m, k) for _, m, k, _ in a} == {(m, k) for m in MODELS for k in KINDS}
    assert all(d != bases[m][0] and d != bases[m][1] for _, m, _, d in a)


@pytest.mark.timeout(240)
def test_small_fuzz_run_has_no_crash_hang_or_untyped_error(bases):
    rep = report(run_fuzz(N, workers=1, seed=15, timeout=60, mem_gb=6, bases=bases))
    assert rep["streams"] == N
    assert not any(rep["outcomes"][o] for o in BAD), rep["findings"]
    assert rep["workers_started"] == 1
    assert rep["outcomes"]["typed_error"] > N // 2
    assert len(rep["by_model_kind"]) == len(MODELS) * len(KINDS)


@pytest.mark.timeout(120)
def test_pool_counts_and_replaces_dead_hung_and_raising_workers():
    pool = Pool(1, [], mem_gb=6, timeout=3)
    cases = [(0, SELFTEST, "t", b"segv"), (1, SELFTEST, "t", b"sleep"),
             (2, SELFTEST, "t", b"alloc"), (3, SELFTEST, "t", b"other")]
    try:
        res = pool.run(cases, Result())
    finally:
        pool.close()
    outcome = {f[0]: (f[3], f[4]) for f in res.findings}
    assert outcome[0] == ("crash", "exit -11")
    assert outcome[1][0] == "hang"
    assert outcome[2][0] == "untyped_error" and "MemoryError" in outcome[2][1]
    assert outcome[3][0] == "untyped_error"
    assert res.workers_started == 3  # the first, and one for each of the crash and the hang
