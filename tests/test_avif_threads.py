"""AVIF encodes never run on one thread: a stream's bytes do not depend on the machine."""

import io

import numpy as np
import pytest
from conftest import smooth_image
from PIL import Image

from cdc import avif_threads
from cdc.refine import base_layer
from cdc.refine.config import REFINE_CONFIGS
from pipeline.evaluation.classical import CODECS


@pytest.fixture(autouse=True)
def restore():
    yield
    avif_threads.set_avif_threads(None)


def textured(h: int = 320, w: int = 256) -> np.ndarray:
    """Several 64-px superblock rows of detail: where libaom's row threading matters."""
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 60, (h, w, 3))
    return np.clip(smooth_image(h, w, seed=3).astype(int) + noise - 30, 0, 255).astype(np.uint8)


def pillow_avif(arr: np.ndarray, threads: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="AVIF", quality=30, speed=6, subsampling="4:2:0",
                              max_threads=threads)
    return buf.getvalue()


def test_one_thread_asked_is_two_and_the_bytes_match_a_many_core_machine():
    arr = textured()
    if pillow_avif(arr, 1) == pillow_avif(arr, 2):
        pytest.skip("this libavif codes alike at 1 and 2 threads: nothing to guard")
    assert pillow_avif(arr, 2) == pillow_avif(arr, 7)  # the premise: any count >= 2 agrees
    cfg = REFINE_CONFIGS["refine-test"]
    avif_threads.set_avif_threads(1)  # a 1-CPU actor
    assert avif_threads.avif_threads() == avif_threads.MIN_AVIF_THREADS
    one = base_layer.encode(arr, 30, 1, cfg).data
    baseline_one = CODECS["avif"].encode(Image.fromarray(arr), 30)
    avif_threads.set_avif_threads(8)  # a big node
    assert avif_threads.avif_threads() == 8
    assert base_layer.encode(arr, 30, 1, cfg).data == one
    assert CODECS["avif"].encode(Image.fromarray(arr), 30) == baseline_one


def test_default_is_the_processs_cpus_and_bad_counts_are_refused():
    avif_threads.set_avif_threads(None)
    assert avif_threads.avif_threads() >= avif_threads.MIN_AVIF_THREADS
    with pytest.raises(ValueError, match="AVIF threads"):
        avif_threads.set_avif_threads(0)
