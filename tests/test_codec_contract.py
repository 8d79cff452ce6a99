"""The contract every registered codec fulfils, in the spirit of diffusers' ModelTesterMixin.

``CodecContract`` holds the checks; each codec (and each space variant) gets a subclass
that only says how to make a tiny random weights file. A codec added to
:mod:`cdc.registry` fails ``test_every_registered_codec_has_a_contract`` until it has one.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import make_weights, smooth_image

from cdc.errors import BitstreamError, CorruptStreamError, ModelMismatchError
from cdc.image import tensor_to_image
from cdc.interface import ImageCodec
from cdc.registry import CODECS, codec_class
from cdc.weights import read_weights_dict
from zoo import codec_from_bytes, load_codec

TIERS = {"preview": {"steps": 1, "gamma": 0.0, "seed": 0},
         "standard": {"steps": 2, "gamma": 0.0, "seed": 0}}


def with_meta(data: bytes, meta: dict) -> bytes:
    """The same weights file with ``meta`` replaced (a new digest)."""
    buf = io.BytesIO()
    torch.save({**read_weights_dict(data, "test"), "meta": meta}, buf)
    return buf.getvalue()


class CodecContract:
    codec_name = ""
    size = (40, 56)  # (h, w): deliberately not a multiple of any stride

    @classmethod
    def make_weights(cls, seed: int) -> bytes:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def weights(cls) -> bytes:
        return with_meta(cls.make_weights(0), {"tiers": TIERS, "train_steps": 1})

    @pytest.fixture(scope="class")
    @classmethod
    def codec(cls, weights):
        return codec_from_bytes(weights, "contract")

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls):
        h, w = cls.size
        return [smooth_image(h, w, seed=1), smooth_image(h, w, seed=2), smooth_image(32, 24, 3)]

    @pytest.fixture(scope="class")
    @classmethod
    def streams(cls, codec, images):
        return codec.compress_batch(images)

    def test_is_the_registered_class_and_protocol(self, codec):
        assert isinstance(codec, codec_class(self.codec_name))
        assert isinstance(codec, ImageCodec)
        assert codec.codec_id == self.codec_name

    def test_round_trip_keeps_the_size(self, codec, images, streams):
        for img, data in zip(images, streams):
            out = codec.decompress(data)
            assert out.size == (img.shape[1], img.shape[0])
            assert np.asarray(out).dtype == np.uint8

    def test_round_trip_depends_on_the_input(self, codec, images, streams):
        """Size and dtype are not enough: a decoder that returns a grey (or any fixed)
        picture has them. The tiny random models reproduce nothing, but what they decode
        is a picture (not flat) and depends on the stream: two different images of one
        size decode to different pictures, the same stream twice to the same one."""
        a, b = (np.asarray(codec.decompress(d)).astype(int) for d in streams[:2])
        assert a.shape == b.shape
        assert a.std() > 2 and b.std() > 2, "a flat decode"
        assert np.abs(a - b).mean() > 2, "two different images decode to the same picture"
        assert np.array_equal(np.asarray(codec.decompress(streams[0])), a)

    def test_batch_equals_single(self, codec, images, streams):
        for img, data in zip(images, streams):
            assert codec.compress(img) == data
        singles = [np.asarray(codec.decompress(d)) for d in streams]
        for a, b in zip(codec.decompress_batch(streams), singles):
            assert np.abs(np.asarray(a).astype(int) - b).max() <= 1

    def test_truncated_and_corrupt_streams_are_typed_errors(self, codec, streams):
        data = streams[0]
        for bad in (data[: len(data) // 2], data[:10],
                    data[:20] + bytes([data[20] ^ 0xFF]) + data[21:]):
            with pytest.raises(BitstreamError):
                codec.decompress(bad)
        with pytest.raises(BitstreamError):
            codec.decompress(b"not a stream at all")

    def test_other_weights_are_refused(self, codec, streams):
        other = codec_from_bytes(self.make_weights(1), "other")
        with pytest.raises(ModelMismatchError):
            other.decompress(streams[0])

    def test_info_needs_no_decode(self, codec, streams):
        d = codec.info(streams[0])
        assert d["codec"] == self.codec_name and d["model_matches"]
        assert d["bytes"] == len(streams[0])

    def test_meta_and_tiers_survive_loading(self, codec, weights, tmp_path):
        path = tmp_path / "w.pt"
        path.write_bytes(weights)
        for loaded in (codec, load_codec(str(path)), codec_class(self.codec_name).from_pretrained(
                str(path))):
            assert loaded.meta["train_steps"] == 1
            assert loaded.recommended_tiers() == TIERS
            assert loaded.weights_sha256 == codec.weights_sha256

    def test_pipeline_hooks(self, codec):
        assert codec.pad_multiple >= 1
        assert "default_steps" in codec.decode_defaults()
        codec.prepare_paths([])  # never fails, whatever the codec


class TestCDC(CodecContract):
    codec_name = "cdc"

    @classmethod
    def make_weights(cls, seed):
        return make_weights(seed)


class TestLatentCDC(CodecContract):
    """CDC on the frozen TAEF2 space (a variant is a configuration, not a copy)."""

    codec_name = "cdc"

    @classmethod
    def make_weights(cls, seed):
        from cdc.models import ConditionalDiffusionCompressor
        from cdc.presets import PRESETS
        from cdc.weights import weights_bytes
        from zoo import load_space

        torch.manual_seed(seed)
        model = ConditionalDiffusionCompressor(PRESETS["lcdc-test"], load_space("taef2")).eval()
        with torch.no_grad():
            for p in model.denoiser.parameters():
                if not p.any():
                    p.normal_(0, 0.05)
            model.g_a[-1].weight.mul_(40.0)
        model.update()
        return weights_bytes(model, "lcdc-test")

    def test_weights_name_the_space_by_digest(self, weights):
        obj = read_weights_dict(weights, "test")
        assert obj["space"]["name"] == "taef2"
        assert set(obj["components"]) == {"taef2_encoder", "taef2_decoder"}
        assert not any(k.startswith("space.") for k in obj["state_dict"])
        assert len(weights) < 6_000_000  # TAEF2 alone is 10.7 MB in fp32: not copied in


class TestDiffC(CodecContract):
    codec_name = "diffc"
    size = (22, 27)

    @classmethod
    def make_weights(cls, seed):
        from test_diffc import make_diffc_weights

        return make_diffc_weights(seed)

    def test_truncated_and_corrupt_streams_are_typed_errors(self, codec, streams):
        data = streams[0]  # a prefix is a valid DiffC stream; a flipped byte is not
        with pytest.raises(BitstreamError):
            codec.decompress(data[:20] + bytes([data[20] ^ 0xFF]) + data[21:])
        with pytest.raises(BitstreamError):
            codec.decompress(b"not a stream at all")


class TestLatentDiffC(TestDiffC):
    """DiffC on the frozen TAEF2 latent: the same codec, another space."""

    codec_name = "diffc"
    size = (40, 56)

    @classmethod
    def make_weights(cls, seed):
        from cdc.diffc.model import DIFFC_CONFIGS, DiffusionPrior, weights_bytes
        from zoo import load_space

        torch.manual_seed(seed)
        prior = DiffusionPrior(DIFFC_CONFIGS["ldiffc-test"], load_space("taef2")).eval()
        with torch.no_grad():
            for p in prior.unet.parameters():
                if not p.any():
                    p.normal_(0, 0.02)
        return weights_bytes(prior, "ldiffc-test")

    def test_codes_the_latent_and_names_the_space(self, codec, weights, streams):
        obj = read_weights_dict(weights, "test")
        assert obj["space"]["name"] == "taef2" and not any(
            k.startswith("space.") for k in obj["state_dict"])
        h, w = self.size
        assert codec.coded_dims(h, w) == 32 * 5 * 7  # ceil(40/8) x ceil(56/8) positions
        # Every prefix still decodes, to the full size, through the frozen decoder.
        for n in codec.step_offsets(streams[0])[::2]:
            assert codec.decompress(streams[0], max_bytes=n).size == (w, h)

    def test_first_coded_step_costs_only_what_the_prior_mean_leaves(self, codec, images):
        # At the start level ᾱ = 2.4e-9: an ε-model's x̂0 there is its error divided by √ᾱ
        # (once 3.6e4 bits a dimension). The prior predicts the mean, so the first step's
        # KL is that of the image's latent against 0, whatever the weights.
        import math

        from cdc.image import array_to_tensor, pad_to_multiple, to_rgb_array

        arr, _ = to_rgb_array(images[0])
        h, w = arr.shape[:2]
        x0 = codec.prior.encode_space(pad_to_multiple(array_to_tensor(arr),
                                                      codec.config.pad_multiple)[0])
        _, dims = codec._prepare(h, w)
        _, report = codec.encode(images[0])
        t1 = report["levels"][0]
        c0, ct, sigma = codec.prior.posterior_coeffs(codec.config.train_timesteps - 1, t1)
        assert ct < 1e-3  # x_t barely enters: the mean is all that matters
        expect = float((c0 * x0.reshape(-1)[dims] / sigma).double().pow(2).sum()) / 2 / math.log(2)
        assert report["kl_bits"][0] == pytest.approx(expect, rel=1e-4)

    def test_levels_the_mean_replaces_skip_the_network(self, codec, monkeypatch):
        # Where the prior's x̂0 is the mean, the U-Net's output is unused: no call is made,
        # and the estimate is the same as with the call (streams do not change).
        prior = codec.prior
        top = codec.config.train_timesteps - 1
        assert prior.sampler.mean_replaces(prior.abar(top), clip=False)
        x = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(0))
        with_call = prior.sampler.predict(prior.eps(x, top), x, prior.abar(top), False)
        calls = []
        monkeypatch.setattr(prior, "eps", lambda *a: calls.append(a) or None)
        x0, eps = prior.x0_hat(x, top)
        assert not calls
        assert torch.equal(x0, with_call[0]) and torch.equal(eps, with_call[1])


class TestCorrDiff(CodecContract):
    codec_name = "corrdiff"

    @classmethod
    def make_weights(cls, seed):
        """``test_corrdiff.corrdiff_bytes`` with a louder end-to-end head: at default init
        its output hardly depends on ŷ (two images' decodes differ by 0.2 levels), the
        encoder then picks w = 1 everywhere and every stream decodes to one picture."""
        from cdc.corrdiff.codec import corrdiff_weights_bytes
        from cdc.corrdiff.correction import CorrectionConfig
        from cdc.corrdiff.decoder import DecoderConfig, E2EDecoder
        from zoo.loader import model_from_bytes

        model, _ = model_from_bytes(make_weights(seed), "test")
        torch.manual_seed(seed + 100)
        dec = E2EDecoder(model.cfg, DecoderConfig(head_channels=8, head_layers=1))
        dec.init_trunk_from(model.context)
        with torch.no_grad():
            dec.head[0].weight.mul_(30.0)
        corr = CorrectionConfig(correct_last=2, skip_final=False)
        return corrdiff_weights_bytes(model, dec.eval(), corr, "corrdiff-test")


class TestLatentCorrDiff(TestCorrDiff):
    """CorrDiff on the latent CDC base: the end-to-end decoder predicts the TAEF2 latent."""

    codec_name = "corrdiff"

    @classmethod
    def make_weights(cls, seed):
        from cdc.corrdiff.codec import corrdiff_weights_bytes
        from cdc.corrdiff.correction import CorrectionConfig
        from cdc.corrdiff.decoder import DecoderConfig, E2EDecoder
        from zoo.loader import model_from_bytes

        model, _ = model_from_bytes(TestLatentCDC.make_weights(seed), "test")
        torch.manual_seed(seed + 100)
        dec = E2EDecoder(model.cfg, DecoderConfig(head_channels=8, head_layers=1))
        dec.init_trunk_from(model.context)
        corr = CorrectionConfig(correct_last=2, skip_final=False)
        return corrdiff_weights_bytes(model, dec.eval(), corr, "lcorrdiff-test")

    def test_corrects_in_the_latent_and_replays_exactly(self, codec, images):
        assert codec.config.space == "taef2"
        codec.set_paths([(2, 0.0, 0)])
        (data, recons), = codec.compress_with_reconstructions([images[0]])
        h, w = self.size
        y_hat = codec.decode_latent(codec.unpack(data))[1]
        m = codec.pad_multiple
        assert codec.e2e(y_hat).shape[1:] == (32, -(-h // m) * m // 8, -(-w // m) * m // 8)
        out = np.asarray(codec.decompress(data, steps=2, gamma=0.0))
        want = np.asarray(tensor_to_image(recons[0]))
        assert np.abs(out.astype(int) - want).max() <= 1  # the encoder's simulation, replayed
        assert codec.decompress_e2e(data).size == (w, h)


    def test_pixel_criterion_minimises_pixel_error_and_replays(self, codec, images):
        """criterion "pixels": each weight is chosen by the frozen decoder's pixel MSE (a
        1-step path: the chosen blend beats every other table entry after decoding), and
        the decoder replays the choice exactly as for the latent criterion."""
        from dataclasses import replace

        from cdc.corrdiff import CorrDiffCodec

        pix = CorrDiffCodec(codec.model, codec.decoder,
                            replace(codec.correction, criterion="pixels"), codec.model_id,
                            codec.weights_sha256, paths=[(1, 0.0, 0)])
        (data, recons), = pix.compress_with_reconstructions([images[0]])
        path, = pix.info(data)["corrdiff_paths"]
        h, w = self.size
        orig = torch.from_numpy(np.asarray(images[0])).permute(2, 0, 1).float() / 127.5 - 1
        y_hat = pix.decode_latent(pix.unpack(data))[1]
        context, x0_e2e = pix._context(y_hat), pix.e2e(y_hat)
        table = list(pix.correction.table)
        errs = []
        for k in range(len(table)):  # every table entry forced at the one corrected step
            u, _ = pix._run_path(y_hat, context, x0_e2e, 1, 0.0, [0], 0, 1,
                                 indices=torch.tensor([[k]]))
            rec = pix.model.decode_space(u)[0, :, :h, :w]
            errs.append(float(((rec - orig) ** 2).mean()))
        picked = min(range(len(table)), key=lambda i: abs(table[i] - path["weights"][0]))
        assert errs[picked] <= min(errs) + 1e-6
        out = np.asarray(pix.decompress(data))
        want = np.asarray(tensor_to_image(recons[0]))
        assert np.abs(out.astype(int) - want).max() <= 1


class TestRefine(CodecContract):
    """The base-layer codec: AVIF base + conditional diffusion refinement + tile bound."""

    codec_name = "refine"

    @classmethod
    def make_weights(cls, seed):
        from tests.tiny_refine import refine_bytes

        return refine_bytes(seed)


class TestRefineLatent(TestRefine):
    """The same codec with its refiner on TAEF2 latents (the shipped design)."""

    @classmethod
    def make_weights(cls, seed):
        from tests.tiny_refine import latent_refine_bytes

        return latent_refine_bytes(seed)

    def test_weights_name_the_taef2_components(self, codec):
        from cdc.weights import read_weights_dict

        obj = read_weights_dict(self.make_weights(0), "tiny")
        assert obj["space"]["name"] == "taef2"
        assert set(obj["components"]) == {"taef2_encoder", "taef2_decoder"}
        assert codec.space is not None and codec.config.space == "taef2"


def test_every_registered_codec_has_a_contract():
    covered = {cls.codec_name for cls in CodecContract.__subclasses__()}
    assert covered >= set(CODECS)


def test_registry_is_the_one_table():
    from cdc.bitstream import CODEC_IDS

    assert CODEC_IDS == {e.name: e.byte for e in CODECS.values()}
    assert len({e.byte for e in CODECS.values()}) == len(CODECS)
    with pytest.raises(CorruptStreamError):
        from cdc.describe import describe_stream

        describe_stream(b"CDC\x01\x7f" + bytes(30))


def test_every_method_that_takes_a_stream_raises_only_typed_errors():
    """No list of names: a codec's new stream-reading method is wrapped because it takes a
    stream; an encoder method (images in) is not."""
    from cdc.base import BaseCodec, is_decode_entry_point

    class Toy(BaseCodec):
        codec_id = "toy"

        def peek(self, data: bytes) -> int:
            return data[10**6]  # an IndexError from below

        def compress_batch(self, images: list) -> list[bytes]:
            raise IndexError("encoder errors are not decode errors")

    with pytest.raises(CorruptStreamError, match="IndexError"):
        Toy("toy", "00" * 32).peek(b"short")
    with pytest.raises(IndexError):
        Toy("toy", "00" * 32).compress_batch([])
    for name in CODECS:
        cls = codec_class(name)
        for klass in cls.__mro__:
            for attr, fn in vars(klass).items():
                if is_decode_entry_point(attr, fn):
                    assert getattr(getattr(cls, attr), "_typed_decode_errors", False), \
                        f"{cls.__name__}.{attr} takes a stream but is not wrapped"
