"""The bare base layer: AVIF's boxes dropped by the encoder, rebuilt byte for byte."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from conftest import smooth_image
from PIL import Image

from cdc.errors import CorruptStreamError
from cdc.refine import bare_avif, base_layer
from cdc.refine.config import REFINE_CONFIGS
from cdc.refine.stream import parse
from tests.tiny_refine import latent_refine_bytes
from zoo import codec_from_bytes


def avif(arr: np.ndarray, quality: int = 30, subsampling: str = "4:2:0", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="AVIF", quality=quality, speed=6,
                              subsampling=subsampling, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("h,w", [(1, 1), (17, 33), (96, 128)])
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
def test_strip_then_rebuild_gives_libavifs_bytes(h: int, w: int, subsampling: str) -> None:
    data = avif(smooth_image(h, w, seed=h), subsampling=subsampling)
    bare = bare_avif.strip(data, w, h)
    assert bare is not None and len(bare) == len(data) - 272
    assert bare_avif.rebuild(bare, w, h) == data


def test_a_layout_it_does_not_write_keeps_the_whole_file() -> None:
    arr = smooth_image(32, 48, seed=1)
    exif = Image.Exif()
    exif[0x010E] = "a description"
    assert bare_avif.strip(avif(arr, exif=exif.tobytes()), 48, 32) is None
    cfg = REFINE_CONFIGS["refine-latent-test"]
    assert cfg.base_bare
    # the encoder falls back to the whole file when the size it rebuilds with is not libavif's
    assert bare_avif.strip(avif(arr), 47, 32) is None


def test_the_encoder_keeps_the_payload_and_the_decoder_sees_the_same_picture() -> None:
    arr = smooth_image(80, 120, seed=2)
    cfg = REFINE_CONFIGS["refine-latent-test"]
    bare = base_layer.encode(arr, 40, 1, cfg)
    whole = base_layer.encode(arr, 40, 1, dataclasses.replace(cfg, base_bare=False))
    assert bare.bare and not whole.bare
    assert len(bare.data) == len(whole.data) - 272
    a = base_layer.decode(bare.data, 80, 120, 1, bare=True)
    b = base_layer.decode(whole.data, 80, 120, 1)
    assert (a == b).all()
    # a ×2 base rebuilds at the downscaled size the header implies
    half = base_layer.encode(arr, 40, 2, cfg)
    assert half.bare and base_layer.decode(half.data, 80, 120, 2, bare=True).shape[-2:] == (80, 120)


def test_a_codec_stream_is_smaller_and_says_it_is_bare() -> None:
    codec = codec_from_bytes(latent_refine_bytes(0), "test")
    img = smooth_image(64, 96, seed=3)
    data = codec.with_rate(quality=30).compress(img)
    p = parse(data)
    assert p.bare and len(p.avif) < 272
    assert "bare" in codec.info(data)["base_layer"]
    out = np.asarray(codec.decompress(data, steps=0))
    ref = base_layer.decode(avif(img, 30), 64, 96, 1)
    assert np.array_equal(out, np.asarray(Image.fromarray(
        ((ref[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))))


@pytest.mark.parametrize("bad", [b"\x00\x0c", b"\x00\x2c\x00" + b"\x12\x00", b"\x04\x0c\xe0x"])
def test_hostile_bare_bases_are_typed_errors(bad: bytes) -> None:
    with pytest.raises(CorruptStreamError):
        base_layer.decode(bad, 16, 16, 1, bare=True)


def test_garbage_av1_payload_is_a_typed_error_not_a_crash() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        payload = b"\x04\x0c\x00" + rng.integers(0, 256, int(rng.integers(1, 200)),
                                                 dtype=np.uint8).tobytes()
        with pytest.raises(CorruptStreamError):
            base_layer.decode(payload, 24, 40, 1, bare=True)
