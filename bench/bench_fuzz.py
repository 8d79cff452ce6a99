"""Fuzz the shipped codecs' decoders: mutated and crafted streams, each decoded in a
long-lived worker process with memory and time caps.

    python bench/bench_fuzz.py --streams 100000 --workers 1 --seed 0
    python bench/bench_fuzz.py --streams 2000 --json fuzz.json --save-dir findings/

Base streams: small generated photos (32–64 px for cdc-small and corrdiff-small, 16–24 px
for diffc-small, whose decode replays 20 coded steps; 16–64 px for the latent models, whose
networks run at 1/8) encoded with every model of ``zoo/models.json`` (``MODELS``: the pixel
models, the ``lcdc-*`` ladder, ``lcorrdiff-q2``, ``ldiffc-small``) and with a tiny random
refine codec (``refine-random``: a whole-AVIF base layer in a container; the shipped
``refine-avif`` writes bare bases), and ``refine-avif@onnx``: the shipped default's streams
through its torch-free decoder (``OnnxFirstRefineCodec``; torch only encodes them). Each
fuzzed stream is one base stream with one mutation kind:

* ``bitflip``: 1–8 random bits flipped; ``overwrite``: 1–3 runs of random bytes;
  ``truncate``: cut at a random length; ``append``: random bytes added at the end;
* ``bitflip+crc``: bits flipped, then the trailer CRC (and DiffC's plan CRC) recomputed;
* ``header``: height, width or flags set to edge or random values, or the raw header
  bytes (codec id, version, model digest) edited, every checksum recomputed
  (:mod:`bench.streams`);
* ``section``: CDC/CorrDiff: a section payload cut, extended, bit-flipped, replaced,
  emptied or swapped; refine: the AVIF inside section B (bits flipped in its coded data or
  anywhere, runs overwritten, cut, extended, its size boxes edited, another base's AVIF,
  random bytes; a bare base — av1C bytes + AV1 payload, no boxes — takes the same edits
  anywhere) or its scale/quality bytes (the bare flag, bit 7, set or cleared), or
  section W, with the header's base-layer CRC
  and the trailer recomputed, so the bytes reach the native AVIF decoder; DiffC: the plan
  (levels, chunk counts, k, seed, coding) or the
  step payloads replaced, with every CRC recomputed (including the per-step CRC-16s and
  the data CRC: such a DiffC stream is *valid*, it just decodes to another image);
* ``splice``: a prefix of this stream and a suffix of another base stream (any codec),
  the trailer recomputed half the time.

Each decode (``codec.decompress`` with ``--steps`` DDIM steps (refine: every other case
at steps 0, the base layer alone), and ``describe_stream``,
``cdc info``'s parser) runs in a worker with ``RLIMIT_AS`` = ``--mem-gb`` and a decode
budget sized so the worst accepted decode takes a few seconds; the parent kills a worker
that takes longer than ``--timeout`` (a *hang*) or finds it dead (a *crash*: its signal
or exit code is recorded) and starts a new one. Outcomes:

* ``typed_error``: a ``cdc.errors.CodecError`` (the wrapped ones, "decoding failed (X:
  …)" from ``BaseCodec``'s safety net, are also counted by the type they wrap);
* ``valid_decode``: an image came back (the bytes pass every check: the header edits that
  name another valid source mode, DiffC with recomputed CRCs);
* ``valid_diffc_prefix``: DiffC decoded a truncated stream as the prefix it is;
* ``crash``, ``hang``, ``untyped_error`` (anything else, from ``decompress`` or from
  ``describe_stream``): the targets are 0. Their streams are written to ``--save-dir``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUTCOMES = ("typed_error", "valid_decode", "valid_diffc_prefix", "crash", "hang",
            "untyped_error")
BAD = ("crash", "hang", "untyped_error")
KINDS = ("bitflip", "overwrite", "truncate", "append", "bitflip+crc", "header", "section",
         "splice")
PIXEL_MODELS = ("cdc-small", "diffc-small", "corrdiff-small")
#: The tiny random refine codec built here (whole-AVIF bases; the shipped refine-avif is bare).
REFINE_MODEL = "refine-random"


def shipped_models() -> tuple[str, ...]:
    """Every model of ``zoo/models.json``."""
    return tuple(sorted(json.loads((ROOT / "zoo" / "models.json").read_text())))


#: The shipped default's torch-free decoder (cdc decompress / cdc get): its ONNX graphs and
#: numpy steps behind the codec protocol (streams encoded by the torch codec).
ONNX_MODEL = "refine-avif@onnx"
MODELS = (*shipped_models(), REFINE_MODEL, ONNX_MODEL)
#: Base image sizes (h, w) per codec: small, so that a decode that gets through is fast.
SIZES = {"cdc": ((32, 32), (40, 56), (64, 48)), "corrdiff": ((32, 32), (48, 40), (64, 64)),
         "diffc": ((16, 16), (16, 24), (24, 20)), "refine": ((24, 24), (40, 56), (64, 48))}
#: The same for the latent models (networks at 1/8; padded to 32 or 64 px).
LATENT_SIZES = {"cdc": ((16, 16), (40, 56), (64, 48)),
                "corrdiff": ((24, 24), (48, 40), (64, 64)),
                "diffc": ((16, 16), (24, 40), (32, 32))}


def refine_weights(seed: int = 0) -> bytes:
    """A tiny random refine model (the tests' own): its refinement changes the image, so the
    blend weights the encoder writes are not all zero."""
    from tests.tiny_refine import refine_bytes

    return refine_bytes(seed)


def load_fuzz_codec(model: str):
    """A shipped model (``zoo.load_codec``), or the tiny random refine codec."""
    if model == REFINE_MODEL:
        from zoo import codec_from_bytes

        return codec_from_bytes(refine_weights(), REFINE_MODEL).with_rate(quality=30)
    from zoo import load_codec

    if model == ONNX_MODEL:
        from cdc.refine.onnx_codec import OnnxFirstRefineCodec
        from zoo.onnx_graphs import load_onnx_decoder

        name = model.split("@")[0]
        return OnnxFirstRefineCodec(load_onnx_decoder(name, threads=1), lambda: load_codec(name))

    return load_codec(model)


def sizes_for(codec) -> tuple[tuple[int, int], ...]:
    latent = getattr(getattr(codec, "config", None), "space_stride", 1) > 1
    return (LATENT_SIZES if latent else SIZES)[codec.codec_id]
#: The workers' decode budget: what a service decoding untrusted streams on this machine
#: could set (``--decode-budget`` / ``DecodeBudget.parse`` syntax); the worst decode it
#: admits (64² diffc-small at 24 evaluations, 2²⁸ candidate draws) takes a few seconds.
FUZZ_BUDGET = "pixels=65536,pixel_steps=131072,rcc_draws=268435456,alloc_bytes=1GiB"


def base_streams(models: Iterable[str] = MODELS) -> dict[str, list[bytes]]:
    """model -> a few streams of generated photos encoded with the shipped weights."""
    import torch
    from PIL import Image

    from bench.streams import smooth_image

    torch.set_num_threads(1)
    out: dict[str, list[bytes]] = {}
    for m in models:
        codec = load_fuzz_codec(m)
        out[m] = [codec.compress(Image.fromarray(smooth_image(h, w, i)))
                  for i, (h, w) in enumerate(sizes_for(codec))]
    return out


# -- mutations -------------------------------------------------------------------------
EDGE_SIDES = (0, 1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 4096, 65535, 65536,
              1 << 21)


def _flip(rng: random.Random, d: bytearray, n: int) -> None:
    for _ in range(n):
        if d:
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)


def _side(rng: random.Random) -> int:
    return rng.choice(EDGE_SIDES) if rng.random() < 0.6 else rng.randrange(1 << 16)


def _bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def _mutate_payload(rng: random.Random, p: bytes, others: list[bytes]) -> bytes:
    op = rng.randrange(6)
    if op == 0:
        return p[: rng.randrange(len(p) + 1)]
    if op == 1:
        return p + _bytes(rng, rng.randint(1, 64))
    if op == 2:
        d = bytearray(p)
        _flip(rng, d, rng.randint(1, 8))
        return bytes(d)
    if op == 3:
        return _bytes(rng, rng.choice((len(p), rng.randint(0, 2 * len(p) + 8))))
    if op == 4:
        return b""
    return rng.choice(others) if others else p


def _section_cdc(rng: random.Random, data: bytes) -> bytes:
    from bench.streams import with_sections
    from cdc.bitstream import Container

    c = Container.unpack(data)
    tags = list(c.sections)
    if rng.random() < 0.15:  # a new, unknown section
        return with_sections(data, **{chr(rng.randrange(32, 127)): _bytes(rng, rng.randint(0, 9))})
    tag = rng.choice(tags)
    others = [v for k, v in c.sections.items() if k != tag]
    return with_sections(data, **{tag: _mutate_payload(rng, c.sections[tag], others)})


def _section_diffc(rng: random.Random, data: bytes) -> bytes:
    from bench.streams import recompute_trailer
    from cdc.diffc import stream as st

    p = st.parse(data)
    steps, payloads = list(p.plan.steps), list(p.received)
    seed, t_start, coding = p.plan.seed, p.plan.t_start, p.plan.coding
    op = rng.randrange(6)
    if op == 0:  # one step's k / chunk count / level
        j = rng.randrange(len(steps))
        s = steps[j]
        k = rng.choice((1, s.k, s.k + 1, 12, 13, 16, rng.randint(1, 16)))
        n = rng.choice((0, 1, s.n_chunks, s.n_chunks + 1, 2 * s.n_chunks, rng.randrange(5000)))
        steps[j] = st.Step(s.t, n, k)
        if rng.random() < 0.5:
            payloads[j] = (_bytes(rng, st.packed_size(n, k)) if coding == st.CODING_FIXED
                           else _mutate_payload(rng, payloads[j], payloads))
    elif op == 1:  # payloads only (with every CRC recomputed: a valid stream)
        for j in rng.sample(range(len(steps)), rng.randint(1, min(3, len(steps)))):
            payloads[j] = (_bytes(rng, len(payloads[j])) if rng.random() < 0.5
                           else _mutate_payload(rng, payloads[j], payloads))
    elif op == 2:  # fewer or more steps
        n = rng.randint(0, len(steps) + 4)
        while len(steps) < n:
            last = steps[-1].t if steps else t_start
            if last == 0:
                break
            steps.append(st.Step(rng.randrange(last), rng.randint(1, 64), rng.randint(1, 12)))
            payloads.append(_bytes(rng, rng.randint(1, 64)))
        steps, payloads = steps[:n], payloads[:n]
    elif op == 3:  # seed, start level, coding scheme
        seed = rng.randrange(1 << 32)
        t_start = rng.choice((t_start, t_start + 1, max(steps[0].t + 1, t_start - 1), 999,
                              10**6, rng.randrange(2000) + steps[0].t + 1))
        coding = rng.choice((coding, 1 - coding))
    else:  # the plan's raw bytes, then its C and trailer CRCs recomputed
        from cdc.bitstream import read_header

        h = read_header(data, validate=False)
        p_start, p_len = st._section(data, h.end, "P")
        d = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            d[p_start + rng.randrange(p_len)] = rng.randrange(256)
        return recompute_trailer(bytes(d))
    # Step sizes and CRCs come from the payloads (st.pack); a fixed-width step whose
    # payload no longer fits its (n, k) is left inconsistent on purpose.
    steps = [st.Step(s.t, s.n_chunks, s.k) for s in steps]
    plan = st.Plan(seed, t_start, steps, coding, p.plan.layout)
    return st.pack(p.digest, p.height, p.width, p.flags, plan, payloads)


def _box(avif: bytes, name: bytes) -> tuple[int, int] | None:
    """(start, end) of the payload of the first ISOBMFF box ``name`` (32-bit sizes)."""
    i = avif.find(name)
    if i < 4:
        return None
    size = int.from_bytes(avif[i - 4 : i], "big")
    return i + 4, min(len(avif), i - 4 + size) if size >= 8 else len(avif)


def _mutate_avif(rng: random.Random, avif: bytes, others: list[bytes]) -> bytes:
    d = bytearray(avif)
    op = rng.randrange(9)
    if op in (0, 1):  # bits flipped in the AV1 data (the boxes intact: the decoder runs)
        mdat = _box(avif, b"mdat")
        lo, hi = mdat if mdat and mdat[1] > mdat[0] else (0, len(d))
        for _ in range(rng.randint(1, 8 if op == 0 else 64)):
            d[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    elif op == 2:  # bits flipped anywhere (box sizes, item locations, av1C)
        _flip(rng, d, rng.randint(1, 8))
    elif op == 3:  # runs overwritten
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(d))
            d[pos : pos + rng.randint(1, 16)] = _bytes(rng, rng.randint(1, 16))
    elif op == 4:  # cut
        return avif[: rng.randrange(len(avif))]
    elif op == 5:  # extended
        return avif + _bytes(rng, rng.randint(1, 256))
    elif op == 6:  # the image size (ispe) or the coded data's length edited
        box = _box(avif, b"ispe") if rng.random() < 0.5 else None
        if box:  # version/flags (4 bytes), then width and height, 32 bits each
            pos = box[0] + 4 + 4 * rng.randrange(2)
            d[pos : pos + 4] = rng.choice((0, 1, 65535, 1 << 20, 1 << 31, (1 << 32) - 1,
                                           rng.randrange(1 << 32))).to_bytes(4, "big")
        else:
            i = avif.find(b"mdat")
            if i >= 4:
                d[i - 4 : i] = rng.randrange(1 << 32).to_bytes(4, "big")
    elif op == 7:  # another base stream's AVIF (another size)
        return rng.choice(others) if others else avif[::-1]
    else:  # random bytes after a valid-looking ftyp
        return avif[:32] + _bytes(rng, rng.randint(0, 2 * len(avif)))
    return bytes(d)


def _section_refine(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """Section B's AVIF (mostly) or its scale/quality bytes, or section W, edited; the
    header's base-layer CRC and the trailer recomputed: the container is valid."""
    from cdc.bitstream import Container, symbols_crc

    c = Container.unpack(data)
    b, w = c.sections["B"], c.sections["W"]
    r = rng.random()
    if r < 0.7:
        others = []
        for s in pool:
            try:
                o = Container.unpack(s)
            except Exception:  # noqa: BLE001 - another codec's stream
                continue
            if o.codec == "refine" and o.sections["B"][2:] != b[2:]:
                others.append(o.sections["B"][2:])
        b = b[:2] + _mutate_avif(rng, b[2:], others)
    elif r < 0.8:  # scale and quality
        b = bytes([rng.choice((0, 1, 2, 3, 4, 8, 16, 255)),
                   rng.choice((0, 30, 100, 101, 255, 0x80, 0x80 | 30, b[1] ^ 0x80))]) + b[2:]
    else:
        w = _mutate_payload(rng, w, [b])
    return Container(c.codec, c.model_digest, c.height, c.width, symbols_crc(b), c.flags,
                     {"B": b, "W": w}).pack()


def _header(rng: random.Random, data: bytes) -> bytes:
    from bench.streams import patch_header, recompute_trailer
    from cdc.bitstream import read_header

    if rng.random() < 0.25:  # raw header bytes: version, codec id, flags, digest, varints
        h = read_header(data, validate=False)
        d = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            d[rng.randrange(4, h.end)] = rng.randrange(256)
        return recompute_trailer(bytes(d))
    kw: dict[str, int] = {}
    while not kw:
        if rng.random() < 0.5:
            kw["height"] = _side(rng)
        if rng.random() < 0.5:
            kw["width"] = _side(rng)
        if rng.random() < 0.3:
            kw["flags"] = rng.randrange(256) if rng.random() < 0.5 else rng.randrange(16)
    return patch_header(data, **kw)


def mutate(rng: random.Random, kind: str, data: bytes, pool: list[bytes]) -> bytes:
    """One mutation of ``kind`` (see the module doc) of the base stream ``data``."""
    from bench.streams import recompute_trailer

    d = bytearray(data)
    if kind == "bitflip":
        _flip(rng, d, rng.randint(1, 8))
    elif kind == "overwrite":
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(d))
            d[pos : pos + rng.randint(1, 16)] = _bytes(rng, rng.randint(1, 16))
    elif kind == "truncate":
        return data[: rng.randrange(len(data))]
    elif kind == "append":
        return data + _bytes(rng, rng.randint(1, 64))
    elif kind == "bitflip+crc":
        _flip(rng, d, rng.randint(1, 8))
        return recompute_trailer(bytes(d))
    elif kind == "header":
        return _header(rng, data)
    elif kind == "section":
        from cdc.bitstream import read_header

        codec = read_header(data, validate=False).codec
        if codec == "refine":
            return _section_refine(rng, data, pool)
        return (_section_diffc if codec == "diffc" else _section_cdc)(rng, data)
    elif kind == "splice":
        other = rng.choice(pool)
        out = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other)):]
        return recompute_trailer(out) if rng.random() < 0.5 else out
    else:
        raise ValueError(f"unknown mutation kind {kind!r}")
    return bytes(d)


def fuzz_cases(bases: dict[str, list[bytes]], n: int, seed: int,
               kinds: Iterable[str] = KINDS) -> Iterator[tuple[int, str, str, bytes]]:
    """(index, model, kind, stream) for ``n`` streams, round-robin over models and kinds,
    each with its own RNG (case i is the same whatever the worker count)."""
    models, kinds = sorted(bases), list(kinds)
    pool = [s for v in bases.values() for s in v]
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        model = models[i % len(models)]
        kind = kinds[(i // len(models)) % len(kinds)]
        base = rng.choice(bases[model])
        # A crafting helper may refuse a combination (e.g. levels), and a mutation may
        # undo itself (a bit flipped twice, a splice at the same offset, a field set to
        # its own value): draw again, so that every case differs from its base stream.
        for _ in range(50):
            try:
                data = mutate(rng, kind, base, pool)
            except ValueError:
                continue
            if data != base:
                break
        else:
            data = base[:-1]
        yield i, model, kind, data


SELFTEST = "__selftest__"


def _selftest(data: bytes) -> None:
    if data == b"segv":
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)
    if data == b"sleep":
        time.sleep(10**6)
    if data == b"alloc":  # over RLIMIT_AS: a MemoryError, untyped here (no codec around it)
        bytearray(1 << 40)


# -- the worker --------------------------------------------------------------------------
def worker_main(conn, models: list[str], mem_bytes: int, budget: str, steps: int) -> None:
    """Load the codecs once, then decode streams from ``conn`` until told to stop."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    if mem_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from cdc.describe import describe_stream
    from cdc.diffc import stream as st
    from cdc.errors import BitstreamError, CodecError
    from cdc.limits import DecodeBudget

    codecs = {}
    for m in models:
        codecs[m] = load_fuzz_codec(m)
        codecs[m].with_budget(DecodeBudget.parse(budget) if budget else DecodeBudget())
    conn.send(("ready", os.getpid()))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        idx, model, data = msg
        codec = codecs.get(model)
        t = time.perf_counter()
        detail = ""
        try:
            if model == SELFTEST:  # the pool's own test: a crash, a hang, an untyped error
                _selftest(data)
            if codec is None:
                raise KeyError(model)
            kw = {"steps": steps} if steps > 0 else {}
            if codec.codec_id == "refine" and idx % 2:
                kw = {"steps": 0}  # the base layer alone (also from a prefix)
            codec.decompress(data, **kw)
            outcome = "valid_decode"
            if codec.codec_id == "diffc" and len(data) < st.parse(data).full_length:
                outcome = "valid_diffc_prefix"
        except CodecError as e:
            outcome, detail = "typed_error", type(e).__name__
            msg_ = str(e)
            if msg_.startswith("decoding failed (") or msg_.startswith("decoding ran out"):
                detail += "<" + msg_.split("(", 1)[1].split(":", 1)[0] + ">"
        except BaseException as e:  # noqa: BLE001 - the point: count them
            outcome, detail = "untyped_error", f"{type(e).__name__}: {str(e)[:200]}"
        try:
            describe_stream(data)
        except BitstreamError:
            pass
        except BaseException as e:  # noqa: BLE001
            outcome, detail = "untyped_error", f"describe_stream {type(e).__name__}: {str(e)[:200]}"
        conn.send((idx, outcome, detail, time.perf_counter() - t))


@dataclass
class _Worker:
    proc: mp.Process
    conn: object
    task: tuple | None = None
    deadline: float = 0.0


@dataclass
class Result:
    counts: dict = field(default_factory=lambda: defaultdict(Counter))  # (model, kind) -> outcome
    errors: dict = field(default_factory=lambda: defaultdict(Counter))  # model -> error type
    findings: list = field(default_factory=list)  # (index, model, kind, outcome, detail, data)
    model_seconds: dict = field(default_factory=lambda: defaultdict(float))  # decode time
    seconds: float = 0.0
    startup_seconds: float = 0.0
    workers_started: int = 0
    slowest: float = 0.0

    def total(self, outcome: str | None = None) -> int:
        return sum(c[outcome] if outcome else sum(c.values()) for c in self.counts.values())


class Pool:
    """``workers`` long-lived decoding processes; a dead or hung one is replaced."""

    def __init__(self, workers: int, models: list[str], *, mem_gb: float, timeout: float,
                 budget: str = FUZZ_BUDGET, steps: int = 1, start_timeout: float = 600):
        self.ctx = mp.get_context("spawn")
        self.args = (list(models), int(mem_gb * (1 << 30)), budget, steps)
        self.timeout, self.start_timeout = timeout, start_timeout
        self.started = 0
        self.stop = False  # set (e.g. by SIGTERM): finish the decodes in flight, then report
        self.workers = [self._start() for _ in range(workers)]
        for w in self.workers:
            self._ready(w)

    def _start(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker_main, args=(child, *self.args), daemon=True)
        proc.start()
        child.close()
        self.started += 1
        return _Worker(proc, parent)

    def _ready(self, w: _Worker) -> None:
        if not w.conn.poll(self.start_timeout):
            raise RuntimeError("a fuzz worker did not start")
        try:
            msg = w.conn.recv()
        except EOFError:
            w.proc.join(5)
            raise RuntimeError(f"a fuzz worker died while starting (exit {w.proc.exitcode}); "
                               "is --mem-gb too small for torch and the models?") from None
        assert msg[0] == "ready", msg

    def _replace(self, i: int) -> _Worker:
        w = self.workers[i]
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(10)
        w.conn.close()
        new = self.workers[i] = self._start()
        self._ready(new)
        return new

    def run(self, cases: Iterable[tuple[int, str, str, bytes]], res: Result,
            on_progress=None, max_seconds: float | None = None) -> Result:
        it = iter(cases)
        t0 = time.perf_counter()
        pending = True

        def feed(w: _Worker) -> None:
            nonlocal pending
            if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                self.stop = True
            if self.stop:
                pending = False
                return
            try:
                case = next(it)
            except StopIteration:
                pending = False
                return
            w.task = case
            w.deadline = time.perf_counter() + self.timeout
            w.conn.send((case[0], case[1], case[3]))

        for w in self.workers:
            feed(w)
        while any(w.task for w in self.workers):
            busy = [w for w in self.workers if w.task]
            left = max(0.0, min(w.deadline for w in busy) - time.perf_counter())
            ready = wait([w.conn for w in busy], timeout=left)
            now = time.perf_counter()
            for i, w in enumerate(list(self.workers)):
                if not w.task:
                    continue
                idx, model, kind, data = w.task
                if w.conn in ready:
                    try:
                        _, outcome, detail, sec = w.conn.recv()
                    except (EOFError, OSError):
                        w.proc.join(10)
                        outcome, detail, sec = "crash", f"exit {w.proc.exitcode}", 0.0
                elif now >= w.deadline:
                    outcome, detail, sec = "hang", f"over {self.timeout:g} s", self.timeout
                else:
                    continue
                w.task = None
                res.counts[(model, kind)][outcome] += 1
                res.slowest = max(res.slowest, sec)
                res.model_seconds[model] += sec
                if detail and outcome == "typed_error":
                    res.errors[model][detail] += 1
                if outcome in BAD:
                    res.findings.append((idx, model, kind, outcome, detail, data))
                if outcome in ("crash", "hang"):
                    w = self._replace(i)
                if pending:
                    feed(w)
                if on_progress:
                    on_progress(res, time.perf_counter() - t0)
        res.seconds += time.perf_counter() - t0
        res.workers_started = self.started
        return res

    def close(self) -> None:
        for w in self.workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self.workers:
            w.proc.join(10)
            if w.proc.is_alive():
                w.proc.kill()


def run_fuzz(n: int, *, workers: int = 1, seed: int = 0, timeout: float = 60.0,
             mem_gb: float = 6.0, steps: int = 1, budget: str = FUZZ_BUDGET,
             models: Iterable[str] = MODELS, kinds: Iterable[str] = KINDS,
             bases: dict[str, list[bytes]] | None = None, on_progress=None,
             stop_on_signal: bool = False, max_seconds: float | None = None) -> Result:
    models = list(models)
    t = time.perf_counter()
    bases = bases or base_streams(models)
    pool = Pool(workers, models, mem_gb=mem_gb, timeout=timeout, budget=budget, steps=steps)
    res = Result(startup_seconds=time.perf_counter() - t)
    if stop_on_signal:
        import signal

        def _stop(*_):
            pool.stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    try:
        pool.run(fuzz_cases(bases, n, seed, kinds), res, on_progress, max_seconds)
    finally:
        pool.close()
    return res


def report(res: Result) -> dict:
    by_model: dict = defaultdict(Counter)
    by_kind: dict = defaultdict(Counter)
    for (model, kind), c in res.counts.items():
        by_model[model].update(c)
        by_kind[kind].update(c)
    return {
        "streams": res.total(), "seconds": res.seconds,
        "streams_per_s": res.total() / res.seconds if res.seconds else 0.0,
        "startup_seconds": res.startup_seconds, "workers_started": res.workers_started,
        "slowest_decode_s": res.slowest,
        "outcomes": {o: res.total(o) for o in OUTCOMES},
        "by_model": {m: dict(c) for m, c in sorted(by_model.items())},
        "model_seconds": {m: round(v, 1) for m, v in sorted(res.model_seconds.items())},
        "by_kind": {k: dict(c) for k, c in sorted(by_kind.items())},
        "by_model_kind": {f"{m}/{k}": dict(c) for (m, k), c in sorted(res.counts.items())},
        "typed_errors": {m: dict(c.most_common()) for m, c in sorted(res.errors.items())},
        "findings": [{"index": i, "model": m, "kind": k, "outcome": o, "detail": d,
                      "bytes": len(b)} for i, m, k, o, d, b in res.findings],
    }


def _table(rows: dict[str, dict], title: str) -> str:
    cols = [o for o in OUTCOMES]
    w = max(len(title), *(len(r) for r in rows))
    out = [f"{title:<{w}}  " + "  ".join(cols)]
    for name, c in rows.items():
        out.append(f"{name:<{w}}  " + "  ".join(f"{c.get(o, 0):>{len(o)}}" for o in cols))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per decode (hang)")
    ap.add_argument("--mem-gb", type=float, default=6.0, help="RLIMIT_AS of each worker")
    ap.add_argument("--steps", type=int, default=1, help="DDIM steps per decode (0: default)")
    ap.add_argument("--decode-budget", default=FUZZ_BUDGET, help="'' for the default budget")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="stop feeding new streams after this long (start-up not counted); "
                         "the report says how many ran")
    ap.add_argument("--json", default=None, help="write the report here")
    ap.add_argument("--save-dir", default="bench-fuzz-findings",
                    help="streams that crashed, hung or raised untyped errors")
    ap.add_argument("--progress-every", type=float, default=30.0, help="seconds")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    last = [0.0]

    def progress(res: Result, elapsed: float) -> None:
        if elapsed - last[0] >= args.progress_every:
            last[0] = elapsed
            bad = {o: res.total(o) for o in BAD}
            print(f"[{elapsed:7.0f} s] {res.total():>7} streams, {res.total() / elapsed:.1f}/s, "
                  f"{bad}", file=sys.stderr, flush=True)

    res = run_fuzz(args.streams, workers=args.workers, seed=args.seed, timeout=args.timeout,
                   mem_gb=args.mem_gb, steps=args.steps, budget=args.decode_budget,
                   models=args.models.split(","), kinds=args.kinds.split(","),
                   on_progress=progress, stop_on_signal=True, max_seconds=args.max_seconds)
    rep = report(res)
    rep["stopped_early"] = rep["streams"] < args.streams
    rep.update(command=" ".join(sys.argv), date=time.strftime("%Y-%m-%d %H:%M"),
               cpus=os.cpu_count(), load_avg=os.getloadavg(), budget=args.decode_budget,
               mem_gb=args.mem_gb, timeout=args.timeout, steps=args.steps, seed=args.seed)
    if res.findings:
        d = Path(args.save_dir)
        d.mkdir(parents=True, exist_ok=True)
        for i, m, k, o, _, b in res.findings:
            (d / f"{o}-{m}-{k.replace('+', '_')}-{i}.cdc").write_bytes(b)
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2))
    if rep["stopped_early"]:
        print(f"stopped early (signal or --max-seconds) after {rep['streams']} of "
              f"{args.streams} streams")
    print(f"{rep['streams']} streams in {rep['seconds']:.0f} s: {rep['streams_per_s']:.1f} "
          f"streams/s on {args.workers} worker(s) ({rep['workers_started']} started; start-up "
          f"{rep['startup_seconds']:.0f} s not counted); slowest decode "
          f"{rep['slowest_decode_s']:.2f} s")
    print(_table(rep["by_model"], "model"))
    print("decode seconds per model: " + ", ".join(f"{m} {v:.0f}"
                                                   for m, v in rep["model_seconds"].items()))
    print(_table(rep["by_kind"], "kind"))
    print(_table(rep["by_model_kind"], "model/kind"))
    for m, errs in rep["typed_errors"].items():
        print(f"{m} typed errors: " + ", ".join(f"{k} {v}" for k, v in errs.items()))
    print("outcomes: " + ", ".join(f"{o} {n}" for o, n in rep["outcomes"].items()))
    for f in rep["findings"][:20]:
        print(f"FINDING {f}")
    sys.exit(1 if any(rep["outcomes"][o] for o in BAD) else 0)


if __name__ == "__main__":
    main()
