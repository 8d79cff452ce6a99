"""Spaces: the shipped TAEF2 autoencoder loads digest-checked, round-trips an image, and
runs tiled in bounded memory with no seams; pixel space is the identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smooth_image, tile_by_side

from cdc import tiling
from cdc.errors import WeightsError
from cdc.spaces import PixelSpace, TAEF2Space, build_space
from zoo import component_bytes, load_space
from zoo.components import COMPONENTS


@pytest.fixture(scope="module")
def taef2() -> TAEF2Space:
    return load_space("taef2")


def to_x(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_round_trip_is_close_and_latent_has_the_declared_shape(taef2):
    x = to_x(smooth_image(64, 96, seed=4))
    with torch.no_grad():
        z = taef2.encode(x)
        y = taef2.decode(z)
    assert z.shape == (1, 32, 8, 12) and taef2.stride == 8 and taef2.channels == 32
    psnr = 10 * torch.log10(4 / ((y - x) ** 2).mean())
    assert psnr > 24  # a smooth synthetic image; Kodak measures 30.2 dB (README)


def test_tiles_leave_no_seams(taef2, monkeypatch):
    """Tiled encode/decode equals the whole-image result (margins exceed the receptive field)."""
    monkeypatch.setattr(tiling, "whole", tile_by_side)  # this small image would run whole
    x = to_x(smooth_image(200, 264, seed=5))[..., :200, :264]
    x = x[..., : 200 // 8 * 8, : 264 // 8 * 8]
    with torch.no_grad():
        z_whole, y_whole = taef2.encode(x), None
        y_whole = taef2.decode(z_whole)
        small = TAEF2Space(taef2.encoder.state_dict(), taef2.decoder.state_dict(), tile=64)
        z_tiled = small.encode(x)
        y_tiled = small.decode(z_whole)
    assert (z_tiled - z_whole).abs().max() < 1e-4
    assert (y_tiled - y_whole).abs().max() < 2e-3  # < 1/4 of one 8-bit level


def test_a_changed_component_is_refused(tmp_path):
    bad = bytearray(component_bytes("taef2_decoder"))
    bad[-100] ^= 1
    path = tmp_path / "taef2_decoder.pth"
    path.write_bytes(bytes(bad))
    with pytest.raises(WeightsError, match="sha256"):
        component_bytes("taef2_decoder", COMPONENTS["taef2_decoder"][1], path=path)
    with pytest.raises(WeightsError, match="unknown pretrained component"):
        component_bytes("nope")


def test_pixel_space_is_the_identity_and_specs_round_trip(taef2):
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(PixelSpace().encode(x), x)
    assert isinstance(build_space({"name": "pixel"}), PixelSpace)
    assert taef2.spec() == {"name": "taef2", "tile": 512}
    assert set(taef2.components()) == {"taef2_encoder", "taef2_decoder"}
    with pytest.raises(ValueError):
        build_space({"name": "vae-xl"})
    assert not any(p.requires_grad for p in taef2.parameters())
    taef2.train()
    assert not taef2.training  # frozen: never in training mode


def test_latent_decode_budget_counts_the_taef2_tiles():
    """At 1024x1024 a latent CDC decode's U-Net evaluation is small (1,024 attention
    tokens); the TAEF2 decoder's 640-px tiles of 64 channels are not (~0.5 GB): the
    decode budget's estimate holds the larger of the two, so a budget sized to the U-Net
    alone refuses the stream."""
    from cdc.bitstream import DIGEST_BYTES, Container
    from cdc.errors import ResourceLimitError
    from cdc.limits import DecodeBudget
    from zoo import load_codec

    codec = load_codec("lcdc-q1")
    side, s = 1024, codec.config.space_stride
    tiles = codec.model.space.decode_bytes(side, side)
    unet = codec.unet_alloc(side // s, side // s)
    assert tiles > 4 * unet and tiles > 400 << 20
    assert codec.render_alloc(side, side) == tiles + codec.extra_alloc(side, side)
    c = Container("cdc", bytes(DIGEST_BYTES), side, side, 0)
    codec.budget = DecodeBudget(max_alloc_bytes=unet + codec.extra_alloc(side, side) + 1)
    with pytest.raises(ResourceLimitError, match="max_alloc_bytes"):
        codec.check_budget(c, steps=1)
    codec.budget = DecodeBudget(max_alloc_bytes=codec.render_alloc(side, side))
    codec.check_budget(c, steps=1)
