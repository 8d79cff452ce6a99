"""CDC codec: round trips, determinism, cross-device exactness, error cases."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cdc import (
    BadMagicError,
    CDCCodec,
    CorruptStreamError,
    ImageError,
    ModelMismatchError,
    SymbolMismatchError,
    UnsupportedVersionError,
    describe,
)
from cdc.bitstream import Container, read_varint, write_varint
from tests.conftest import smooth_image


@pytest.mark.parametrize("h,w", [(48, 72), (64, 64), (13, 101), (130, 65)])
def test_round_trip_symbols_and_size(codec: CDCCodec, h: int, w: int):
    img = smooth_image(h, w, seed=h)
    data = codec.compress(img)
    container, y_hat = codec.decode_latent(data)  # raises unless symbol checksum matches
    assert (container.height, container.width) == (h, w)
    out = codec.decompress(data, steps=2)
    assert out.size == (w, h) and out.mode == "RGB"


def test_decoded_symbols_equal_encoder(codec: CDCCodec, image):
    from cdc.image import array_to_tensor, pad_to_multiple

    x, _ = pad_to_multiple(array_to_tensor(image), 64)
    enc = codec.model.compress_latent(x)
    dec = codec.model.decompress_latent(enc["strings"], enc["shape"])
    assert torch.equal(enc["symbols"], dec["symbols"])
    assert torch.equal(enc["y_hat"], dec["y_hat"])


def test_batch_equals_single(codec: CDCCodec):
    imgs = [smooth_image(40, 60, s) for s in range(3)] + [smooth_image(70, 30, 9)]
    batch = codec.compress_batch(imgs)
    assert batch == [codec.compress(i) for i in imgs]


def test_determinism_and_seeds(codec: CDCCodec, image):
    data = codec.compress(image)
    assert data == codec.compress(image)
    a = np.asarray(codec.decompress(data, steps=3, gamma=0.8, seed=7))
    b = np.asarray(codec.decompress(data, steps=3, gamma=0.8, seed=7))
    c = np.asarray(codec.decompress(data, steps=3, gamma=0.8, seed=8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    d0 = np.asarray(codec.decompress(data, steps=2, gamma=0.0, seed=1))
    d1 = np.asarray(codec.decompress(data, steps=2, gamma=0.0, seed=2))
    assert np.array_equal(d0, d1), "gamma=0 must be deterministic whatever the seed"


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_any_step_count(codec: CDCCodec, steps: int):
    data = codec.compress(smooth_image(20, 20))
    assert codec.decompress(data, steps=steps).size == (20, 20)


def test_all_training_steps(tmp_path):
    """steps = N_train walks every training time (a short schedule keeps this fast)."""
    from tests.conftest import make_weights

    path = tmp_path / "w.pt"
    path.write_bytes(make_weights(0, train_timesteps=40))
    c = CDCCodec.from_pretrained(str(path))
    assert c.model.sampler.timesteps(40) == list(range(39, -1, -1))
    data = c.compress(smooth_image(20, 20))
    assert c.decompress(data, steps=40).size == (20, 20)
    with pytest.raises(ValueError, match="steps"):
        c.decompress(data, steps=41)


@pytest.mark.slow
def test_thousand_steps(codec: CDCCodec):
    data = codec.compress(smooth_image(20, 20))
    assert codec.decompress(data, steps=1000).size == (20, 20)


def test_bad_step_count(codec: CDCCodec, image):
    data = codec.compress(image)
    with pytest.raises(ValueError, match="steps"):
        codec.decompress(data, steps=0)
    with pytest.raises(ValueError, match="gamma"):
        codec.decompress(data, steps=1, gamma=-1)


def test_symbols_identical_across_threads_and_precision(weights_file, image):
    """Entropy decoding must not depend on thread count or the heavy nets' precision."""
    enc_fp32 = CDCCodec.from_pretrained(weights_file)
    enc_bf16 = CDCCodec.from_pretrained(weights_file, precision="bf16")
    data = enc_fp32.compress(image)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, y1 = enc_fp32.decode_latent(data)
        torch.set_num_threads(2)
        _, y2 = enc_fp32.decode_latent(data)
    finally:
        torch.set_num_threads(threads)
    _, y3 = enc_bf16.decode_latent(data)
    assert torch.equal(y1, y2) and torch.equal(y1, y3)
    # A stream from a bf16 encoder decodes (symbol checksum holds) with an fp32 decoder.
    data_bf16 = enc_bf16.compress(image)
    enc_fp32.decode_latent(data_bf16)
    assert enc_bf16.decompress(data, steps=2).size == enc_fp32.decompress(data, steps=2).size


# -- container errors -------------------------------------------------------------------------
def test_corrupted_stream(codec: CDCCodec, image):
    data = bytearray(codec.compress(image))
    data[len(data) // 2] ^= 0x40
    with pytest.raises(CorruptStreamError, match="checksum"):
        codec.decompress(bytes(data))


@pytest.mark.parametrize("cut", [1, 5, 20, -1, -5])
def test_truncated_stream(codec: CDCCodec, image, cut: int):
    data = codec.compress(image)
    with pytest.raises((CorruptStreamError, BadMagicError)):
        codec.decompress(data[:cut])


def test_wrong_magic(codec: CDCCodec, image):
    with pytest.raises(BadMagicError):
        codec.decompress(b"\x89PNG" + codec.compress(image)[4:])
    with pytest.raises(BadMagicError):
        codec.decompress(b"")


def test_wrong_version(codec: CDCCodec, image):
    data = bytearray(codec.compress(image))
    data[3] = 9
    with pytest.raises(UnsupportedVersionError, match="version 9"):
        codec.decompress(bytes(data))


def test_wrong_model(codec: CDCCodec, other_weights_file, image):
    other = CDCCodec.from_pretrained(other_weights_file)
    with pytest.raises(ModelMismatchError, match="weights"):
        other.decompress(codec.compress(image))


def _repack(data: bytes, **changes) -> bytes:
    c = Container.unpack(data)
    for k, v in changes.items():
        setattr(c, k, v)
    return c.pack()


def test_symbol_checksum_mismatch_is_an_error(codec: CDCCodec, image):
    data = codec.compress(image)
    bad = _repack(data, symbols_crc=Container.unpack(data).symbols_crc ^ 1)
    with pytest.raises(SymbolMismatchError):
        codec.decompress(bad)


def test_swapped_sections_are_an_error(codec: CDCCodec):
    a = Container.unpack(codec.compress(smooth_image(64, 64, 1)))
    b = Container.unpack(codec.compress(smooth_image(64, 64, 2)))
    a.sections["Y"] = b.sections["Y"]
    with pytest.raises((SymbolMismatchError, CorruptStreamError)):
        codec.decompress(a.pack())


def test_missing_section(codec: CDCCodec, image):
    c = Container.unpack(codec.compress(image))
    del c.sections["Y"]
    with pytest.raises(CorruptStreamError, match="missing section"):
        codec.decompress(c.pack())


def test_garbage_after_valid_header(codec: CDCCodec, image):
    c = Container.unpack(codec.compress(image))
    body = c.pack()[:-4]
    body = body[: c.header_bytes - 4] + b"Y\xff\xff\xff\x7f"
    data = body + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(CorruptStreamError):
        codec.decompress(data)


def test_varint_round_trip():
    for v in [0, 1, 127, 128, 300, 2**20, 2**40]:
        enc = write_varint(v)
        assert read_varint(enc, 0, len(enc)) == (v, len(enc))


def test_header_is_small(codec: CDCCodec, image):
    info = describe(codec.compress(image))
    assert info["header_bytes"] <= 32
    assert info["sections"].keys() == {"Z", "Y"}


# -- image modes --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,note", [
    ("L", "grayscale"), ("P", "palette"), ("RGBA", "alpha"), ("LA", "alpha"),
    ("CMYK", "colour space"), ("I;16", "bit depth"), ("1", "grayscale"),
])
def test_image_modes(codec: CDCCodec, mode: str, note: str):
    rgb = Image.fromarray(smooth_image(30, 40))
    if mode == "I;16":
        arr = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
        img = Image.fromarray(arr)
    else:
        img = rgb.convert(mode)
    data = codec.compress(img)
    assert note in describe(data)["source"]
    out = codec.decompress(data, steps=1)
    assert out.size == (40, 30) and out.mode == "RGB"


def test_numpy_inputs(codec: CDCCodec):
    gray = smooth_image(20, 30)[:, :, 0]
    assert "grayscale" in describe(codec.compress(gray))["source"]
    deep = smooth_image(20, 30).astype(np.uint16) * 257
    assert "bit depth" in describe(codec.compress(deep))["source"]
    with pytest.raises(ImageError, match="dtype"):
        codec.compress(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ImageError, match="shape"):
        codec.compress(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(ImageError, match="mode"):
        codec.compress(Image.new("F", (8, 8)))


def test_batch_decode_matches_single(codec: CDCCodec):
    imgs = [smooth_image(40, 60, s) for s in range(3)] + [smooth_image(70, 30, 9)]
    streams = codec.compress_batch(imgs)
    batch = codec.decompress_batch(streams, steps=2, gamma=0.8, seeds=[1, 2, 3, 4])
    for s, seed, img in zip(streams, [1, 2, 3, 4], batch):
        single = np.asarray(codec.decompress(s, steps=2, gamma=0.8, seed=seed), np.int16)
        assert np.abs(single - np.asarray(img, np.int16)).max() <= 1
