"""A small run of the fuzz benchmark (bench/bench_fuzz.py): a few hundred mutated and
crafted streams of the pixel models' fixture streams and of one latent model (lcdc-q1,
TAEF2), each decoded in a capped worker process; none may crash, hang or raise anything but
a typed ``CodecError``. The refine codec's crafted base layers (a malformed AVIF inside a
valid container) reach the native AVIF decoder and come back typed. And the pool itself: a
worker that dies, hangs or raises is counted as such (and replaced)."""

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
    ONNX_MODEL,
    PIXEL_MODELS,
    REFINE_MODEL,
    SELFTEST,
    Pool,
    Result,
    base_streams,
    fuzz_cases,
    load_fuzz_codec,
    report,
    run_fuzz,
    shipped_models,
)

FIXTURES = Path(__file__).parent / "fixtures" / "streams"
LATENT = "lcdc-q1"
TEST_MODELS = (*PIXEL_MODELS, LATENT)
N = 160  # 5 per model and kind


@pytest.fixture(scope="module")
def bases() -> dict[str, list[bytes]]:
    out = {m: [(FIXTURES / f"{m}-{v}.cdc").read_bytes() for v in "ab"] for m in PIXEL_MODELS}
    out[LATENT] = base_streams([LATENT])[LATENT][:2]  # 16 and 40x56 px: 64 px padded
    return out


def test_the_pool_covers_every_shipped_model_and_refine():
    assert set(MODELS) == {*shipped_models(), REFINE_MODEL, ONNX_MODEL}
    assert {"lcdc-q1", "lcdc-q4", "lcorrdiff-q2", "ldiffc-small"} <= set(MODELS)


def test_cases_are_reproducible(bases):
    a = list(fuzz_cases(bases, 640, seed=3))
    assert a == list(fuzz_cases(bases, 640, seed=3)) != list(fuzz_cases(bases, 640, seed=4))
    assert {(m, k) for _, m, k, _ in a} == {(m, k) for m in TEST_MODELS for k in KINDS}
    assert all(d != bases[m][0] and d != bases[m][1] for _, m, _, d in a)


@pytest.mark.timeout(600)
def test_small_fuzz_run_has_no_crash_hang_or_untyped_error(bases):
    rep = report(run_fuzz(N, workers=1, seed=15, timeout=60, mem_gb=6, bases=bases,
                          models=TEST_MODELS))
    assert rep["streams"] == N
    assert not any(rep["outcomes"][o] for o in BAD), rep["findings"]
    assert rep["workers_started"] == 1
    assert rep["outcomes"]["typed_error"] > N // 2
    assert len(rep["by_model_kind"]) == len(TEST_MODELS) * len(KINDS)
    assert sum(rep["by_model"][LATENT].values()) == N // len(TEST_MODELS)


@pytest.mark.timeout(600)
def test_small_fuzz_of_the_torch_free_decoder():
    """The shipped default's streams, mutated, through its ONNX decoder (cdc get / cdc
    decompress): only typed errors or images."""
    bases = {ONNX_MODEL: base_streams([ONNX_MODEL])[ONNX_MODEL]}
    rep = report(run_fuzz(80, workers=1, seed=21, timeout=60, mem_gb=6, bases=bases,
                          models=[ONNX_MODEL]))
    assert rep["streams"] == 80 and not any(rep["outcomes"][o] for o in BAD), rep["findings"]
    assert rep["outcomes"]["typed_error"] > 20
    assert len(rep["by_model_kind"]) == len(KINDS)


def test_malformed_avif_in_a_valid_container_is_a_typed_error():
    """Refine ``section`` cases: the header's base-layer CRC and the trailer are
    recomputed, so the edited AVIF reaches Pillow's libavif; whatever it makes of it comes
    back as an image or a CorruptStreamError (decoded in this process: a crash fails)."""
    from cdc.bitstream import Container
    from cdc.errors import CodecError, CorruptStreamError

    codec = load_fuzz_codec(REFINE_MODEL)
    bases = base_streams([REFINE_MODEL])
    native, decoded = 0, 0
    for _, _, _, data in fuzz_cases(bases, 60, seed=7, kinds=("section",)):
        Container.unpack(data)  # a valid container: every checksum matches
        try:
            codec.decompress(data, steps=0)
            decoded += 1
        except CorruptStreamError as e:
            native += "not a decodable AVIF" in str(e)
        except CodecError:
            pass
    assert native >= 10 and decoded >= 1, (native, decoded)


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
