"""Crafted streams (issue 15): headers and plans edited, checksums recomputed, so that a few
bytes claim what they cannot hold. Each is refused with a typed error, quickly, before
CompressAI's C++ rANS decoder or any large allocation runs.

The decodes that used to crash (SIGSEGV), allocate gigabytes or run for a minute run in a
child process with a timeout: a regression fails the test instead of killing pytest.
Tiny random models only (tests/conftest.py, tests/test_diffc.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_weights, smooth_image
from typer.testing import CliRunner

from cdc.bitstream import Container
from cdc.describe import describe_stream
from cdc.diffc import stream as st
from cdc.errors import (
    BitstreamError,
    CodecError,
    CorruptStreamError,
    DecodeSettingsError,
    ResourceLimitError,
)
from cdc.limits import DecodeBudget, parse_size
from cdc.rans import check_string, min_bits_from_cdf
from zoo import codec_from_bytes

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 5.0  # each crafted stream is refused within this (measured in the child)

if str(ROOT) not in sys.path:  # bench/streams.py: the forger's helpers, shared with bench/
    sys.path.insert(0, str(ROOT))
from bench.streams import crc as _crc  # noqa: E402
from bench.streams import patch_header, with_plan, with_sections  # noqa: E402


@pytest.fixture(scope="module")
def cdc_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("crafted") / "cdc-test.pt"
    path.write_bytes(make_weights(0))
    return path


@pytest.fixture(scope="module")
def diffc_weights(tmp_path_factory) -> Path:
    from test_diffc import make_diffc_weights

    path = tmp_path_factory.mktemp("crafted") / "diffc-test.pt"
    path.write_bytes(make_diffc_weights(0))
    return path


@pytest.fixture(scope="module")
def cdc_stream(cdc_weights: Path) -> bytes:
    return codec_from_bytes(cdc_weights.read_bytes(), "t").compress(smooth_image(40, 56))


@pytest.fixture(scope="module")
def diffc_stream(diffc_weights: Path) -> bytes:
    return codec_from_bytes(diffc_weights.read_bytes(), "t").compress(smooth_image(22, 27, 3))


def crafted_cdc(good: bytes) -> dict[str, bytes]:
    y = Container.unpack(good)
    return {
        "65535x65535": patch_header(good, height=65535, width=65535),
        "16384x16384": patch_header(good, height=16384, width=16384),
        "4096x4096": patch_header(good, height=4096, width=4096),
        "65536 side": patch_header(good, width=65536),
        "source mode 7": patch_header(good, flags=7 << 1),
        "reserved flag bit": patch_header(good, flags=0x10),
        "Y not whole words": with_sections(good, Y=y.sections["Y"][:-1]),
        "Y cut to 8 bytes": with_sections(good, Y=y.sections["Y"][:8]),
        "Z empty": with_sections(good, Z=b""),
    }


def crafted_diffc(good: bytes, n_dims: int) -> dict[str, bytes]:
    from compressai.ans import RansEncoder

    from cdc.diffc import rcc

    p = st.parse(good)
    steps = p.plan.steps
    k16 = [st.Step(s.t, 1, 16) for s in steps]
    fixed = st.Plan(p.plan.seed, p.plan.t_start, k16, st.CODING_FIXED)
    cdf = rcc.zipf_cdf(8)
    # An escape-coded negative index (CompressAI's encoder loops forever on -2**30 itself:
    # its bypass loop shifts an int32 by 32; the decoder happily returns such values).
    negative = RansEncoder().encode_with_indexes([-1000, 0], [0, 0], [cdf], [len(cdf)], [0])
    first = [st.Step(steps[0].t, 2, 8), *steps[1:]]
    return {
        "k=16 on every step": st.pack(p.digest, p.height, p.width, p.flags, fixed,
                                      [b"\x00\x00"] * len(k16)),
        "1024x1024": patch_header(good, height=1024, width=1024),
        "65536 side": patch_header(good, height=65536),
        "source mode 7": patch_header(good, flags=7 << 1),
        "negative chunk index": with_plan(good, first, [negative, *p.received[1:]]),
        "all dims in 8 bytes": with_plan(good, [st.Step(steps[0].t, n_dims, 8), *steps[1:]],
                                         [bytes(8), *p.received[1:]]),
        "more chunks than dims": with_plan(
            good, [st.Step(steps[0].t, n_dims + 1, 8), *steps[1:]], [bytes(8), *p.received[1:]]),
    }


# -- the child that decodes them ---------------------------------------------------------------
CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from cdc.limits import DecodeBudget
from zoo import codec_from_bytes
codecs = {}
for case in json.load(open(sys.argv[1])):
    print(json.dumps({"start": case["name"]}), flush=True)
    codec = codecs.get(case["weights"])
    if codec is None:
        codec = codecs[case["weights"]] = codec_from_bytes(
            open(case["weights"], "rb").read(), case["weights"])
    codec.budget = DecodeBudget.unlimited() if case["unlimited"] else DecodeBudget()
    data = open(case["stream"], "rb").read()
    t = time.perf_counter()
    try:
        getattr(codec, case["call"])(data)
        res = {"error": None, "mro": []}
    except BaseException as e:
        res = {"error": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
               "message": str(e)}
    res.update(name=case["name"], seconds=time.perf_counter() - t)
    print(json.dumps(res), flush=True)
"""


def run_child(cases: list[dict], tmp_path: Path, timeout: float = 400) -> dict[str, dict]:
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                "")]))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(spec)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    started = [ln["start"] for ln in lines if "start" in ln]
    assert proc.returncode == 0, (f"child died with {proc.returncode} while decoding "
                                  f"{started[-1] if started else '?'!r}: {proc.stderr[-2000:]}")
    return {ln["name"]: ln for ln in lines if "name" in ln}


def cases_for(streams: dict[str, bytes], weights: Path, tmp_path: Path, call: str,
              unlimited: bool = False, prefix: str = "") -> list[dict]:
    out = []
    for name, data in streams.items():
        f = tmp_path / f"{prefix.strip('/') or 's'}-{len(out)}.cdc"
        f.write_bytes(data)
        out.append({"name": prefix + name, "weights": str(weights), "stream": str(f),
                    "call": call, "unlimited": unlimited})
    return out


# What each crafted stream must raise: decompress with the default budget, with no budget
# at all (the stream checks alone), and decode_latent (entropy decoding only).
CDC_EXPECT = {
    "65535x65535": ("ResourceLimitError", "CorruptStreamError", "ResourceLimitError"),
    "16384x16384": ("ResourceLimitError", "CorruptStreamError", "ResourceLimitError"),
    "4096x4096": ("ResourceLimitError", "CorruptStreamError", "CorruptStreamError"),
    "65536 side": ("CorruptStreamError",) * 3,
    "source mode 7": ("CorruptStreamError",) * 3,
    "reserved flag bit": ("CorruptStreamError",) * 3,
    "Y not whole words": ("CorruptStreamError",) * 3,
    "Y cut to 8 bytes": ("BitstreamError",) * 3,  # garbage symbols: their CRC says so
    "Z empty": ("CorruptStreamError",) * 3,
}
DIFFC_EXPECT = {
    "k=16 on every step": ("ResourceLimitError", None),
    "1024x1024": ("ResourceLimitError", None),
    "65536 side": ("CorruptStreamError", "CorruptStreamError"),
    "source mode 7": ("CorruptStreamError", "CorruptStreamError"),
    "negative chunk index": ("CorruptStreamError", "CorruptStreamError"),
    "all dims in 8 bytes": ("CorruptStreamError", "CorruptStreamError"),
    "more chunks than dims": ("CorruptStreamError", "CorruptStreamError"),
}


def _check(res: dict, want: str | None) -> None:
    if want is None:
        return
    assert res["error"] is not None, f"{res['name']}: decoded without an error"
    assert want in res["mro"] and "CodecError" in res["mro"], \
        f"{res['name']}: {res['error']}: {res.get('message')}"
    assert res["seconds"] < SECONDS, f"{res['name']}: refused only after {res['seconds']:.1f} s"


def test_crafted_streams_are_refused_quickly_with_typed_errors(
        tmp_path: Path, cdc_weights: Path, diffc_weights: Path, cdc_stream: bytes,
        diffc_stream: bytes):
    cdc_cases = crafted_cdc(cdc_stream)
    diffc_cases = crafted_diffc(diffc_stream, 3 * 22 * 27)
    assert set(cdc_cases) == set(CDC_EXPECT) and set(diffc_cases) == set(DIFFC_EXPECT)
    assert len(cdc_cases["65535x65535"]) < 600  # a few hundred bytes claim 4.3 gigapixels
    cases = (cases_for(cdc_cases, cdc_weights, tmp_path, "decompress", prefix="cdc/")
             + cases_for(cdc_cases, cdc_weights, tmp_path, "decompress", True, "cdc-unlimited/")
             + cases_for(cdc_cases, cdc_weights, tmp_path, "decode_latent", prefix="cdc-latent/")
             + cases_for(diffc_cases, diffc_weights, tmp_path, "decompress", prefix="diffc/")
             + cases_for({k: v for k, v in diffc_cases.items() if DIFFC_EXPECT[k][1]},
                         diffc_weights, tmp_path, "decompress", True, "diffc-unlimited/"))
    results = run_child(cases, tmp_path)
    assert len(results) == len(cases)
    for name, (default, unlimited, latent) in CDC_EXPECT.items():
        _check(results[f"cdc/{name}"], default)
        _check(results[f"cdc-unlimited/{name}"], unlimited)
        _check(results[f"cdc-latent/{name}"], latent)
    for name, (default, unlimited) in DIFFC_EXPECT.items():
        _check(results[f"diffc/{name}"], default)
        if unlimited:
            _check(results[f"diffc-unlimited/{name}"], unlimited)
    # The messages say what was claimed and which limit refused it.
    assert "max_pixels" in results["cdc/65535x65535"]["message"]
    assert "section 'Z'" in results["cdc-unlimited/65535x65535"]["message"]
    assert "section 'Z'" in results["cdc-latent/4096x4096"]["message"]
    assert "32-bit words" in results["cdc/Y not whole words"]["message"]
    assert "rcc_draws_per_dim" in results["diffc/k=16 on every step"]["message"]
    assert "out of range" in results["diffc/negative chunk index"]["message"]


def test_info_and_decompress_are_one_parser(cdc_stream: bytes, diffc_stream: bytes,
                                            tmp_path: Path, cdc_weights: Path):
    """``cdc info`` refuses exactly what decoding refuses, with the same message."""
    from jobs.cli import app

    codec = codec_from_bytes(cdc_weights.read_bytes(), "t")
    for good in (cdc_stream, diffc_stream):
        for bad in (patch_header(good, flags=7 << 1), patch_header(good, flags=0x20),
                    patch_header(good, width=65536), patch_header(good, height=0)):
            with pytest.raises(CorruptStreamError) as info_error:
                describe_stream(bad)
            f = tmp_path / "bad.cdc"
            f.write_bytes(bad)
            r = CliRunner().invoke(app, ["info", str(f)])
            assert r.exit_code == 3 and str(info_error.value) in r.output, r.output
            if good is cdc_stream:
                with pytest.raises(CorruptStreamError) as dec_error:
                    codec.decompress(bad)
                assert str(dec_error.value) == str(info_error.value)
    # 65535 is the largest side a header may claim (info shows it; the budget refuses it)
    assert describe_stream(patch_header(cdc_stream, width=65535))["width"] == 65535


def test_budget_is_the_callers(cdc_weights: Path, cdc_stream: bytes):
    codec = codec_from_bytes(cdc_weights.read_bytes(), "t")
    assert codec.decompress(cdc_stream).size == (56, 40)
    codec.budget = DecodeBudget(max_pixels=64 * 64 - 1)  # the stream's padded size is 64x64
    with pytest.raises(ResourceLimitError, match="max_pixels") as e:
        codec.decompress(cdc_stream)
    assert e.value.limit == "max_pixels" and e.value.needed == 64 * 64
    codec.budget = DecodeBudget().replace(max_steps=1)
    with pytest.raises(ResourceLimitError, match="max_steps"):
        codec.decompress(cdc_stream, steps=2)
    assert codec.with_budget(None).decompress(cdc_stream, steps=2).size == (56, 40)
    b = DecodeBudget.parse("pixels=1e6, alloc_bytes=2GiB,max_steps=8")
    assert (b.max_pixels, b.max_alloc_bytes, b.max_steps) == (10**6, 2 << 30, 8)
    assert b.max_latent_elements == DecodeBudget().max_latent_elements
    assert parse_size("12GiB") == 12 << 30 and parse_size("4M") == 4_000_000
    for bad in ("pixels", "nope=3", "pixels=-1", "pixels=lots"):
        with pytest.raises(ValueError):
            DecodeBudget.parse(bad)


def test_no_untyped_exception_leaves_decompress(cdc_weights: Path, cdc_stream: bytes,
                                                monkeypatch):
    codec = codec_from_bytes(cdc_weights.read_bytes(), "t")
    with pytest.raises(DecodeSettingsError):  # bad settings: typed, and still ValueErrors
        codec.decompress(cdc_stream, steps=0)
    with pytest.raises(ValueError):
        codec.decompress(cdc_stream, gamma=-1)

    def boom(*a, **k):
        raise IndexError("list index out of range")

    monkeypatch.setattr(codec.model, "render", boom)
    with pytest.raises(CorruptStreamError, match="IndexError"):
        codec.decompress(cdc_stream)

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 36507222016 bytes")

    monkeypatch.setattr(codec.model, "render", oom)
    with pytest.raises(ResourceLimitError, match="out of memory"):
        codec.decompress_batch([cdc_stream])
    with pytest.raises(TypeError):  # not a stream at all: the caller's mistake
        codec.decompress("not bytes")  # type: ignore[arg-type]
    assert issubclass(ResourceLimitError, BitstreamError) and issubclass(
        DecodeSettingsError, CodecError)


def test_the_length_bound_never_refuses_a_valid_string():
    """The tightest case: a long run of the likeliest symbol of a very peaked CDF, which
    costs ~6.6e-5 bits each: the bound must still hold (cdc.rans, check 2)."""
    from compressai.ans import RansDecoder, RansEncoder

    from cdc.models.entropy import min_symbol_bits

    codec = codec_from_bytes(make_weights(0), "t")
    gc = codec.model.entropy.gaussian_conditional
    bits = min_symbol_bits(gc._quantized_cdf, gc._cdf_length)
    row = int(bits.argmin())
    L = int(gc._cdf_length[row])
    cdf = gc._quantized_cdf[row, :L].tolist()
    off = int(gc._offset[row])
    assert abs(float(bits[row]) - min_bits_from_cdf(cdf)) < 1e-12
    likeliest = max(range(L - 1), key=lambda i: cdf[i + 1] - cdf[i]) + off
    for n in (2, 3, 1000, 300_000):  # (CompressAI's encoder aborts on one symbol)
        for syms in ([likeliest] * n, [likeliest] * (n - 1) + [likeliest + 1]):
            s = RansEncoder().encode_with_indexes(syms, [0] * n, [cdf], [L], [off])
            check_string(s, n, n * float(bits[row]), "test")  # never raises on a valid string
            assert RansDecoder().decode_with_indexes(s + bytes(4 * n + 8), [0] * n, [cdf],
                                                     [L], [off]) == syms
    with pytest.raises(CorruptStreamError, match="cannot hold"):
        check_string(bytes(8), 10**6, 10**6 * 2.0, "test")
    assert torch.isfinite(bits).all()


def test_mutated_headers_and_sections_only_raise_bitstream_errors():
    """A few thousand random edits of the shipped fixtures (most with the CRC recomputed)
    through the torch-free parsers: a BitstreamError or a description, nothing else."""
    import random

    rng = random.Random(15)
    fixtures = Path(__file__).parent / "fixtures" / "streams"
    seeds = [(fixtures / f"{m}-a.cdc").read_bytes() for m in ("cdc-small", "diffc-small",
                                                                "corrdiff-small")]
    for _ in range(3000):
        d = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(d) + 1)
            op = rng.random()
            if op < 0.5 and pos < len(d):
                d[pos] = rng.randrange(256)
            elif op < 0.7:
                del d[pos : pos + rng.randint(1, 20)]
            else:
                d[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        data = bytes(d)
        if len(data) > 4 and rng.random() < 0.7:
            data = data[:-4] + _crc(data[:-4])
        try:
            describe_stream(data)
        except BitstreamError:
            pass


# -- issue 26: scheme-1 streams cost the chosen candidates only; the whole stream is
# -- validated before the first network evaluation ------------------------------------------
def _count_network_calls(codec, monkeypatch) -> dict[str, int]:
    calls = {"n": 0}
    forward = codec.prior.unet.forward

    def counted(*a, **k):
        calls["n"] += 1
        return forward(*a, **k)

    monkeypatch.setattr(codec.prior.unet, "forward", counted)
    return calls


def _k16_stream(good: bytes, layout: int) -> bytes:
    """Every step one chunk of 2^16 candidates, each naming the last one (fixed 16 bits)."""
    p = st.parse(good)
    steps = [st.Step(s.t, 1, 16) for s in p.plan.steps]
    plan = st.Plan(p.plan.seed, p.plan.t_start, steps, st.CODING_FIXED, layout)
    return st.pack(p.digest, p.height, p.width, p.flags, plan, [b"\xff\xff"] * len(steps))


def test_crafted_k16_stream_draws_only_the_chosen_candidates(diffc_weights: Path):
    from cdc.diffc import philox, rcc

    codec = codec_from_bytes(diffc_weights.read_bytes(), "t")
    good = codec.compress(smooth_image(64, 64, 1))
    crafted = _k16_stream(good, st.LAYOUT_PHILOX)
    assert len(crafted) < 120
    n_steps, n_dims = len(st.parse(crafted).plan.steps), 3 * 64 * 64
    before = rcc.DECODE_DRAWS["normals"]
    img = codec.decompress(crafted)  # within the default budget: it is cheap now
    drawn = rcc.DECODE_DRAWS["normals"] - before
    assert img.size == (64, 64)
    assert drawn == n_steps * philox.padded_dims(n_dims)  # one candidate a step, not 2^16
    # the same claims under scheme 0 would draw 2^16 times as many: the budget refuses them
    with pytest.raises(ResourceLimitError, match="rcc_draws_per_dim"):
        codec.decompress(_k16_stream(good, st.LAYOUT_STRIDED))
    assert rcc.DECODE_DRAWS["normals"] - before == drawn


@pytest.mark.parametrize("index", [300, -1000])
def test_bad_late_step_is_refused_before_any_network_evaluation(diffc_weights: Path,
                                                                monkeypatch, index):
    """The last step names a candidate outside 0..255 (an escape-coded rANS symbol): the
    decoder used to find out after decoding every step before it."""
    from compressai.ans import RansEncoder

    from cdc.diffc import rcc

    codec = codec_from_bytes(diffc_weights.read_bytes(), "t")
    good = codec.compress(smooth_image(22, 27, 3))
    p = st.parse(good)
    last = len(p.plan.steps) - 1
    assert p.plan.coding == st.CODING_ZIPF and last >= 3
    cdf = rcc.zipf_cdf(8)
    payload = RansEncoder().encode_with_indexes([index, 0], [0, 0], [cdf], [len(cdf)], [0])
    crafted = with_plan(good, [*p.plan.steps[:last], st.Step(p.plan.steps[last].t, 2, 8)],
                        [*p.received[:last], payload])
    calls = _count_network_calls(codec, monkeypatch)
    with pytest.raises(CorruptStreamError, match=f"step {last}: chunk index out of range"):
        codec.decompress(crafted)
    with pytest.raises(CorruptStreamError, match=f"step {last}: chunk index out of range"):
        codec.decode_levels(crafted)
    assert calls["n"] == 0  # refused before the first U-Net evaluation
    # A prefix that stops before the bad step reads (and checks) only what it holds.
    prefix = codec.step_offsets(crafted)[last]
    assert codec.decompress(crafted, max_bytes=prefix, steps=1).size == (27, 22)
    assert calls["n"] == last + 1


def test_cdc_batch_is_validated_whole_before_any_unet_evaluation(cdc_weights: Path,
                                                                 cdc_stream: bytes, monkeypatch):
    """CDC (and CorrDiff, which decodes the same way) entropy-decodes and checks every
    stream of a batch, symbols CRC included, before the first U-Net evaluation."""
    codec = codec_from_bytes(cdc_weights.read_bytes(), "t")
    y = Container.unpack(cdc_stream).sections["Y"]
    bad = with_sections(cdc_stream, Y=bytes(len(y)))  # same length, garbage symbols
    calls = {"n": 0}
    forward = codec.model.denoiser.forward

    def counted(*a, **k):
        calls["n"] += 1
        return forward(*a, **k)

    monkeypatch.setattr(codec.model.denoiser, "forward", counted)
    with pytest.raises(BitstreamError):
        codec.decompress_batch([cdc_stream, cdc_stream, bad], steps=2)
    assert calls["n"] == 0
    assert len(codec.decompress_batch([cdc_stream], steps=2)) == 1 and calls["n"] == 2
