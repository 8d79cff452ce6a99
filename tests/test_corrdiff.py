"""CorrDiff: decoder path = encoder's simulated path, section W, weights files, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_weights, smooth_image
from PIL import Image

from cdc.bitstream import Container
from cdc.corrdiff import (
    CorrDiffCodec,
    CorrectionConfig,
    DecoderConfig,
    E2EDecoder,
    PathRecord,
    corrdiff_weights_bytes,
    corrected_sample,
    pack_w,
    unpack_w,
)
from cdc.corrdiff.correction import choose_weights
from cdc.errors import CorruptStreamError, ModelMismatchError, WeightsError
from cdc.image import tensor_to_image
from zoo import codec_from_bytes, load_codec
from zoo.loader import model_from_bytes

PATHS = [(2, 0.0, 0), (3, 0.8, 5)]


def corrdiff_bytes(seed: int = 0, correction: CorrectionConfig | None = None) -> bytes:
    model, _ = model_from_bytes(make_weights(seed), "test")
    torch.manual_seed(seed + 100)
    dec = E2EDecoder(model.cfg, DecoderConfig(head_channels=8, head_layers=1))
    dec.init_trunk_from(model.context)
    corr = correction or CorrectionConfig(correct_last=2, skip_final=False)
    return corrdiff_weights_bytes(model, dec.eval(), corr, "corrdiff-test")


@pytest.fixture(scope="module")
def cd_bytes() -> bytes:
    return corrdiff_bytes(0)


@pytest.fixture(scope="module")
def cd(cd_bytes) -> CorrDiffCodec:
    codec = codec_from_bytes(cd_bytes, "corrdiff-test")
    assert isinstance(codec, CorrDiffCodec)
    return codec.set_paths(PATHS)


@pytest.fixture(scope="module")
def encoded(cd):
    img = smooth_image(48, 72, seed=3)
    (data, recons), = cd.compress_with_reconstructions([img])
    return img, data, recons


# -- section W --------------------------------------------------------------------------------


def test_w_section_round_trips():
    paths = [PathRecord(4, 0.0, 0, 1, [7, 0]), PathRecord(16, 0.8, -3, 10, [1, 2, 3, 4, 5]),
             PathRecord(1, 0.25, 2**40, 0, [])]
    data = pack_w(paths, bits=3)
    assert unpack_w(data, bits=3, max_steps=1000) == paths
    # 1 version + 1 count + 5 varints per path + indices + 4 CRC
    assert len(data) == 1 + 1 + (5 + 1) + (5 + 2) + (4 + 6 + 0) + 4


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:3] + bytes([d[3] ^ 0x01]) + d[4:], "checksum"),
    (lambda d: d[:-5] + d[-4:], "checksum"),
    (lambda d: d[:4], "truncated"),
    (lambda d: b"", "truncated"),
])
def test_w_section_corruption_is_a_clear_error(mutate, message):
    data = pack_w([PathRecord(4, 0.0, 0, 1, [7, 3])], bits=3)
    with pytest.raises(CorruptStreamError, match=rf"section 'W'.*{message}"):
        unpack_w(mutate(data), bits=3, max_steps=1000)


def _with_crc(body: bytes) -> bytes:
    import struct
    import zlib

    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


@pytest.mark.parametrize("body, message", [
    (bytes([2, 1, 4, 0, 0, 1, 1, 7]), "version"),
    (bytes([1, 1, 4, 0, 0, 3, 2, 0xFF]), "past 4 steps"),   # steps 3..4 of a 4-step path
    (bytes([1, 1, 4, 0, 0, 1, 1, 0xFF]), "padding bits"),   # 3-bit index, 5 stray bits set
    (bytes([1, 1, 4, 0, 0, 1, 1, 7, 0]), "trailing"),
    (bytes([1, 1, 0, 0, 0, 0, 0]), "0 steps"),
    (bytes([1, 0]), "no decode path"),
    (bytes([1, 1, 4, 0, 0, 1, 2]), "truncated"),
])
def test_w_section_inconsistent_content_is_a_clear_error(body, message):
    with pytest.raises(CorruptStreamError, match=rf"section 'W'.*{message}"):
        unpack_w(_with_crc(body), bits=3, max_steps=1000)


# -- the corrected path -----------------------------------------------------------------------


def test_decoder_path_equals_encoders_simulated_path(cd, encoded):
    img, data, recons = encoded
    paths = cd.read_paths(data)
    assert [(p.steps, p.gamma, p.seed) for p in paths] == PATHS
    assert [(p.first, p.count) for p in paths] == [(0, 2), (1, 2)]
    for (steps, gamma, seed), rec in zip(PATHS, recons):
        assert cd.decode_plan(data, steps=steps, gamma=gamma, seed=seed) is not None
        out = np.asarray(cd.decompress(data, steps=steps, gamma=gamma, seed=seed))
        assert out.shape == img.shape
        assert np.array_equal(out, np.asarray(tensor_to_image(rec)))
    # No arguments: the first stored path.
    assert np.array_equal(np.asarray(cd.decompress(data)), np.asarray(tensor_to_image(recons[0])))
    # Batched decode of the same stream twice, at the second path.
    a, b = cd.decompress_batch([data, data], steps=3, gamma=0.8, seeds=[5, 5])
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a).astype(int) - np.asarray(tensor_to_image(recons[1]))).max() <= 1


def test_corrected_sampler_with_zero_weights_is_plain_ddim(cd, encoded):
    _, data, _ = encoded
    _, y_hat = cd.decode_latent(data)
    m = cd.model
    x_n = m.sampler.initial_noise((1, 3, *(s * 16 for s in y_hat.shape[-2:])), 0.8, 7, "cpu")
    ctx = m.context(y_hat)

    def denoise(x, t):
        return m.denoiser(x, t, ctx)

    plain = m.sampler.sample(denoise, x_n, 3)
    e2e = cd.e2e(y_hat)
    zero, _idx = corrected_sample(m.sampler, denoise, x_n, 3, e2e, cd.correction.table, 0, 3,
                                 indices=torch.zeros((1, 3), dtype=torch.long))
    assert torch.equal(plain, zero)
    # w = 1 at the last step returns the end-to-end image itself.
    one, _ = corrected_sample(m.sampler, denoise, x_n, 3, e2e, cd.correction.table, 2, 1,
                              indices=torch.tensor([[len(cd.correction.table) - 1]]))
    assert torch.allclose(one, e2e)


def test_encoder_picks_the_weight_closest_to_the_original():
    torch.manual_seed(0)
    x0, e2e = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    table = torch.tensor(CorrectionConfig().table)
    target = torch.stack([(1 - table[3]) * x0[0] + table[3] * e2e[0],
                          (1 - table[6]) * x0[1] + table[6] * e2e[1]])
    assert choose_weights(x0, e2e, target, table, [(8, 8), (8, 8)]).tolist() == [3, 6]
    # Only the unpadded region counts.
    target[0, :, 4:, :] = 5.0
    assert choose_weights(x0, e2e, target, table, [(4, 8), (8, 8)]).tolist() == [3, 6]


def test_final_step_correction_lowers_mse(cd_bytes):
    # Correcting the final step picks min-MSE blends, so it can never be worse than w = 0.
    codec = codec_from_bytes(cd_bytes, "x")
    codec.correction = CorrectionConfig(correct_last=1, skip_final=False)
    img = smooth_image(64, 64, seed=1)
    (data, (rec,)), = codec.compress_with_reconstructions([img])
    plain = np.asarray(codec.decompress_batch([data], correct=False)[0]).astype(float)
    corr = np.asarray(codec.decompress(data)).astype(float)
    assert np.array_equal(corr, np.asarray(tensor_to_image(rec)).astype(float))
    assert ((corr - img) ** 2).mean() <= ((plain - img) ** 2).mean() + 1e-9


def test_other_settings_fall_back_to_plain_cdc(cd, encoded):
    _, data, _ = encoded
    assert cd.decode_plan(data, steps=1) is None
    assert cd.decode_plan(data, steps=3, gamma=0.8, seed=6) is None  # other seed, γ > 0
    assert cd.decode_plan(data, steps=2, gamma=0.0, seed=9) is not None  # γ = 0: seed unused
    c, y_hat = cd.decode_latent(data)
    plain = cd.model.render(y_hat, steps=1, gamma=0.0, seed=0)
    out = cd.decompress(data, steps=1)
    ref = tensor_to_image(plain[0, :, :c.height, :c.width])
    assert np.array_equal(np.asarray(out), np.asarray(ref))


def test_corrupt_w_section_in_a_stream_is_a_clear_error(cd, encoded):
    _, data, _ = encoded
    c = Container.unpack(data)
    w = bytearray(c.sections["W"])
    w[2] ^= 0x04
    c.sections["W"] = bytes(w)
    bad = c.pack()  # the container's own CRC is valid again: only W's CRC can catch it
    with pytest.raises(CorruptStreamError, match="section 'W'.*checksum"):
        cd.decompress(bad)
    del c.sections["W"]
    with pytest.raises(CorruptStreamError, match="missing section 'W'"):
        cd.decompress(c.pack())
    flipped = bytearray(data)
    flipped[-6] ^= 0xFF
    with pytest.raises(CorruptStreamError):
        cd.decompress(bytes(flipped))


def test_stream_layout_and_info(cd, encoded, codec):
    _img, data, _ = encoded
    c = Container.unpack(data)
    assert c.codec == "corrdiff" and list(c.sections) == ["Z", "Y", "W"]
    info = cd.info(data)
    assert info["corrdiff_weight_bits"] == 3
    assert [p["corrected_steps"] for p in info["corrdiff_paths"]] == [[0, 1], [1, 2]]
    assert len(c.sections["W"]) == 1 + 1 + 2 * (5 + 1) + 4
    with pytest.raises(ModelMismatchError):
        codec.decompress(data)  # a CDC codec refuses a corrdiff stream


# -- weights files ----------------------------------------------------------------------------


def test_weights_round_trip_through_the_zoo(cd_bytes, encoded, tmp_path):
    _img, data, _ = encoded
    path = tmp_path / "corrdiff-test.pt"
    path.write_bytes(cd_bytes)
    again = load_codec(str(path))
    assert isinstance(again, CorrDiffCodec) and again.codec_id == "corrdiff"
    assert again.model_id == "corrdiff-test"
    first = codec_from_bytes(cd_bytes, "a")
    sd1, sd2 = first.decoder.state_dict(), again.decoder.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert again.correction == first.correction
    assert np.array_equal(np.asarray(again.decompress(data)), np.asarray(first.decompress(data)))
    # The file holds the CDC network too: the CDC loader builds it (ignoring our keys), with
    # the base's config itself; CorrDiff's own config is a section of its own.
    from cdc.weights import read_weights_dict

    model, _ = model_from_bytes(cd_bytes, "x")
    assert "corrdiff" not in model.cfg.extra
    assert read_weights_dict(cd_bytes, "x")["corrdiff"]["correction"]["correct_last"] == 2


def test_weights_that_reference_their_base_by_digest(cd_bytes, encoded, tmp_path):
    """A corrdiff file may name its base CDC file by sha256 instead of embedding it (a latent
    base is ~16 MiB): it loads once the base is shipped or in the local model cache, decodes
    the same streams, and a missing, different or mismatched base is a clear error."""
    import hashlib

    from zoo.cache import remember

    img, data, _ = encoded
    model, _ = model_from_bytes(make_weights(0), "base")
    full = codec_from_bytes(cd_bytes, "embedded")
    base_file = tmp_path / "base.pt"
    base_file.write_bytes(make_weights(0))
    sha = hashlib.sha256(base_file.read_bytes()).hexdigest()
    ref = corrdiff_weights_bytes(model, full.decoder, full.correction, "corrdiff-test",
                                 base=("cdc-base", sha))
    assert len(ref) < len(cd_bytes) / 2
    with pytest.raises(WeightsError, match="neither shipped nor in the local model cache"):
        codec_from_bytes(ref, "ref.pt")
    remember(sha, str(base_file))
    again = codec_from_bytes(ref, "ref.pt")
    assert isinstance(again, CorrDiffCodec)
    assert again.set_paths(PATHS).model.cfg == full.model.cfg
    (mine, _), = again.compress_with_reconstructions([img])
    assert len(mine) == len(data)  # the same stream but for the model digest
    assert np.array_equal(np.asarray(again.decompress(mine)), np.asarray(full.decompress(data)))
    # A base with another config, or a malformed reference, is refused.
    from dataclasses import replace

    from cdc.corrdiff.codec import attach_base
    from cdc.weights import read_weights_dict

    obj = read_weights_dict(ref, "ref.pt")
    base_obj = read_weights_dict(make_weights(0), "base")
    base_obj["config"] = replace(model.cfg, latent_channels=model.cfg.latent_channels + 1
                                 ).to_dict()
    with pytest.raises(WeightsError, match="config differs"):
        attach_base(obj, base_obj, "ref.pt")
    obj["base"] = {"model_id": "x", "sha256": "zz"}
    with pytest.raises(WeightsError, match="64 hex digits"):
        from cdc.corrdiff.codec import base_reference

        base_reference(obj, "ref.pt")


def test_cdc_weights_are_not_corrdiff_weights():
    from cdc.weights import read_weights_dict

    obj = read_weights_dict(make_weights(0), "cdc")
    with pytest.raises(WeightsError, match="not corrdiff"):
        CorrDiffCodec.from_weights(obj, "00" * 32, "cdc")


# -- training ---------------------------------------------------------------------------------


def test_train_corrdiff_few_steps_and_export(tmp_path):
    import yaml

    from pipeline.training.train_corrdiff import run_training

    data_dir = tmp_path / "images"
    data_dir.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(80, 96, seed=i)).save(data_dir / f"im{i}.png")
    base = tmp_path / "base.pt"
    base.write_bytes(make_weights(0))
    cfg = {"codec": "corrdiff", "base_model": str(base), "model_id": "corrdiff-test",
           "decoder": {"head_channels": 8, "head_layers": 1}, "correction": {"correct_last": 1},
           "sources": [str(data_dir)], "crop": 64, "max_side": None, "batch_size": 2,
           "steps": 10, "checkpoint_every": 2, "log_every": 1, "zoo_dir": str(tmp_path / "zoo")}
    cfg_path = tmp_path / "corrdiff-test.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    line = run_training(cfg_path, run, max_steps=3)
    assert "step 3/10" in line
    line = run_training(cfg_path, run, max_steps=2, export="corrdiff-test")  # resumes
    assert "step 5/10" in line and "exported corrdiff-test" in line
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 6
    shipped = tmp_path / "zoo" / "weights" / "corrdiff-test.pt"
    codec = load_codec(str(shipped))  # sidecar .sha256 checked
    assert isinstance(codec, CorrDiffCodec) and codec.correction.correct_last == 1
    img = smooth_image(40, 50, seed=9)
    data = codec.compress(img)
    assert codec.decompress(data).size == (50, 40)
    reg = (tmp_path / "zoo" / "models.json").read_text()
    assert '"codec": "corrdiff"' in reg
    # `cdc train` dispatches on the config's codec.
    from typer.testing import CliRunner

    from jobs.cli import app

    r = CliRunner().invoke(app, ["train", str(cfg_path), "--run-dir", str(run), "--max-steps", "1"])
    assert r.exit_code == 0, r.output
    assert "step 6/10" in r.output
    # A config with a wrong codec or unknown keys is refused.
    cfg_path.write_text(yaml.safe_dump({**cfg, "bogus": 1}))
    with pytest.raises(ValueError, match="unknown keys"):
        run_training(cfg_path, run, max_steps=1)


# -- archives and tiers -----------------------------------------------------------------------


def test_archive_round_trip_with_tiers(cd_bytes, tmp_path):
    import io

    from pipeline.archive import Reader, encode_shard, open_or_create, plan_inputs, plan_shards
    from storage import Archive

    root = tmp_path / "imgs"
    root.mkdir()
    for i, (h, w) in enumerate([(40, 56), (64, 64)]):
        Image.fromarray(smooth_image(h, w, seed=i)).save(root / f"{i}.png")
    codec = codec_from_bytes(cd_bytes, "corrdiff-test")  # default path: 2 steps, γ = 0
    items, _ = plan_inputs(str(root))
    arch, _ = open_or_create(str(tmp_path / "a.zarr"), codec, shard_size=8)
    events = list(encode_shard(codec, arch, plan_shards(items, set(), set(), 8)[0], owner="t"))
    assert events[-1]["ok"] == 2
    arch = Archive.open(arch.url)
    r = Reader(arch, codec)
    data = arch["0.png"].data
    # the encoder simulated one path per tier (default tier first), so every tier gets
    # the corrected decode
    assert [(p.steps, p.gamma, p.seed) for p in codec.read_paths(data)] == [
        (4, 0.0, 0), (16, 0.8, 0), (2, 0.0, 0)]
    for tier, steps, gamma in [("preview", 2, 0.0), ("standard", 4, 0.0), ("high", 16, 0.8)]:
        got = Image.open(io.BytesIO(r.get("0.png", tier).data))
        assert codec.decode_plan(data, steps=steps, gamma=gamma, seed=0) is not None
        ref = codec.decompress(data, steps=steps, gamma=gamma, seed=0)
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(ref))
    # a request off the tiers falls back to plain CDC decoding of the same latent
    assert codec.decode_plan(data, steps=3, gamma=0.0) is None


def test_recommended_tiers_reach_new_archives(tmp_path):
    """The weights file's meta (recommended tiers) survives loading, so a new archive
    starts from the model's tiers and the encoder stores one corrected path per tier."""
    from pipeline.archive import open_or_create

    model, _ = model_from_bytes(make_weights(0), "test")
    torch.manual_seed(100)
    dec = E2EDecoder(model.cfg, DecoderConfig(head_channels=8, head_layers=1))
    tiers = {"preview": {"steps": 1, "gamma": 0.8, "seed": 0},
             "standard": {"steps": 2, "gamma": 0.8, "seed": 0}}
    data = corrdiff_weights_bytes(model, dec.eval(), CorrectionConfig(), "corrdiff-test",
                                  meta={"tiers": tiers, "train_steps": 5})
    codec = codec_from_bytes(data, "corrdiff-test")
    assert codec.meta == {"tiers": tiers, "train_steps": 5}
    arch, created = open_or_create(str(tmp_path / "t.zarr"), codec, shard_size=4)
    assert created and arch.tiers == tiers
