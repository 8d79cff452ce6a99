"""Golden streams: every model ``zoo/models.json`` ships (the default included) has a stream
of a fixed crop in ``tests/fixtures/golden/`` (made by ``tests/fixtures/make_golden.py``),
and today's code encodes that crop to the same bytes and decodes the stream to the same
picture, at no lower quality.

A model added to the registry is checked automatically and fails here until its fixture
exists (one command, printed in the failure). Decoded pixels are compared with a
tolerance, not a hash: some models' decodes differ by 1 in a few pixels between CPU thread
counts (lcdc-q3, lcdc-q4, diffc-small at 1 vs 2 threads, 2026-12-06), so a hash would break
on another machine. The stream bytes are compared exactly (they were equal at 1 and 2
threads for every model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests/fixtures/make_golden.py runs as `python -m tests.…`
    sys.path.insert(0, str(ROOT))
from tests.fixtures.make_golden import (  # noqa: E402
    GOLDEN,
    PIXEL_TOLERANCE,
    decode,
    flat_psnr,
    psnr,
    sha256,
    source_image,
)
from zoo import registry  # noqa: E402

SHIPPED = sorted(registry())


def regenerate(name: str) -> str:
    return f"run `python -m tests.fixtures.make_golden {name}` from the repository root"


@pytest.fixture(autouse=True)
def one_thread():
    """Fixtures are made with one thread; decode them the same way."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def golden(name: str) -> dict:
    path = GOLDEN / f"{name}.json"
    if not path.exists():
        pytest.fail(f"no golden stream for model {name}; {regenerate(name)}", pytrace=False)
    record = json.loads(path.read_text())
    sha = registry()[name]["sha256"]
    if record["weights_sha256"] != sha:
        pytest.fail(f"the golden stream of {name} was made with weights "
                    f"{record['weights_sha256'][:12]}, the registry ships {sha[:12]}; if the "
                    f"new weights are intended, {regenerate(name)}", pytrace=False)
    return record


def test_the_default_model_is_among_the_checked():
    from zoo.store import default_model

    assert default_model() in SHIPPED


def test_no_golden_files_for_models_that_are_not_shipped():
    names = {p.stem for p in GOLDEN.iterdir() if p.suffix in (".json", ".cdc", ".png")}
    stale = sorted(names - set(SHIPPED))
    assert not stale, f"golden files for models not in zoo/models.json: {stale}; delete them"


@pytest.mark.parametrize("name", SHIPPED)
def test_golden_stream(name):
    record = golden(name)
    from zoo import load_codec

    data = (GOLDEN / f"{name}.cdc").read_bytes()
    assert sha256(data) == record["stream_sha256"], f"{name}.cdc is not the stream its json names"
    want = np.asarray(Image.open(GOLDEN / f"{name}.png").convert("RGB"))
    assert sha256(want.tobytes()) == record["decoded_sha256"], f"{name}.png is not its json's"
    src = np.asarray(source_image())
    codec = load_codec(name)

    # the encoder still writes the same bytes
    assert codec.compress(Image.fromarray(src)) == data, (
        f"{name}: encoding the golden crop no longer gives the golden stream")

    # the stream still decodes to the golden picture, at the recorded quality
    out = decode(codec, data, record["decode"])
    assert list(out.shape[1::-1]) == record["size"]
    diff = np.abs(out.astype(int) - want.astype(int))
    worst = int(diff.max())
    assert worst <= PIXEL_TOLERANCE, (
        f"{name}: decode differs from the golden by up to {worst} "
        f"(> {PIXEL_TOLERANCE}) in {int((diff > PIXEL_TOLERANCE).sum())} values")
    assert psnr(out, want) >= 40.0
    q = psnr(out, src)
    floor = record["psnr_floor"]
    assert q >= floor, f"{name}: PSNR {q:.2f} dB under the floor {floor}"
    assert record["psnr_floor"] > flat_psnr(src), f"{name}: the recorded floor is no floor"
