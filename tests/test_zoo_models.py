"""Every model the registry ships loads by name (its digest checked) and round-trips a small
image: a model added to ``zoo/models.json`` without its file, with a stale digest, or with a
base it cannot find fails here rather than in a user's archive run."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoo import codec_for_stream, load_codec, registry, sha256_hex

SHIPPED = sorted(registry())


def _image(h: int = 64, w: int = 64) -> Image.Image:
    """A smooth colour gradient with an edge: natural enough for every codec's entropy model."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / w, y / h, ((x + y) > w).astype(np.float32) * 0.6 + 0.2], -1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0 ** 2 / max(float(np.mean((a - b) ** 2)), 1e-12))


def test_registry_is_not_empty_and_names_its_files():
    assert SHIPPED, "the registry lists no models"
    for name in SHIPPED:
        entry = registry()[name]
        assert entry["file"].startswith("weights/") and len(entry["sha256"]) == 64, name


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_round_trips_a_small_image(name):
    entry = registry()[name]
    codec = load_codec(name)
    assert codec.weights_sha256 == entry["sha256"]
    image = _image()
    data = codec.compress(image)
    # the stream names its model: a reader finds the same shipped weights from it alone
    again = codec_for_stream(data)
    assert again.weights_sha256 == entry["sha256"]
    out = codec.decompress(data)
    assert out.size == image.size and out.mode == "RGB"
    # ... and is a picture of the image, not just one of its size: a trained model beats
    # the image's flat mean colour (10.7 dB) by 2 dB (lcdc-q1, the lowest rung: 13.3 dB)
    # and follows the gradients in every channel (lcdc-q1: correlation 0.61 or more)
    src, got = np.asarray(image).astype(float), np.asarray(out).astype(float)
    flat = np.broadcast_to(src.reshape(-1, 3).mean(0).round(), src.shape)
    assert _psnr(got, src) >= _psnr(flat, src) + 2.0, f"{name}: {_psnr(got, src):.2f} dB"
    for k in range(3):
        corr = np.corrcoef(got[..., k].ravel(), src[..., k].ravel())[0, 1]
        assert corr > 0.5, f"{name}: channel {k} correlation {corr:.3f}"
    # decoding is deterministic for a given stream and seed
    assert sha256_hex(codec.decompress(data).tobytes()) == sha256_hex(out.tobytes())


def test_the_default_model_is_rate_controlled_or_the_rung_nearest_0_15_bpp():
    """`cdc compress` without --model uses one flagged model: a rate-controlled one (it meets
    any target itself), else the rung of its rate family whose recorded rate (measured on
    training photos, never Kodak) is nearest 0.15 bpp."""
    from cdc.registry import codec_class
    from zoo.store import default_model

    flagged = [n for n, e in registry().items() if e.get("default") is True]
    assert flagged == [default_model()], f"exactly one default model, got {flagged}"
    if getattr(codec_class(registry()[flagged[0]]["codec"]), "rate_controlled", False):
        return
    family = registry()[flagged[0]]["family"]
    rates = {n: e["rate"]["bpp"] for n, e in registry().items()
             if e.get("family") == family and "rate" in e}
    assert len(rates) >= 4, rates
    assert flagged[0] == min(rates, key=lambda n: abs(rates[n] - 0.15)), rates


def test_flag_default_picks_the_rung_nearest_the_target_and_unflags_the_rest(tmp_path):
    import json

    from zoo.store import flag_default

    reg = {"a": {"family": "f", "rate": {"bpp": 0.05}},
           "b": {"family": "f", "rate": {"bpp": 0.09}, "default": True},
           "c": {"family": "f", "rate": {"bpp": 0.17}},
           "d": {"family": "g", "rate": {"bpp": 0.15}},
           "e": {"family": "f"}}
    (tmp_path / "models.json").write_text(json.dumps(reg))
    assert flag_default("f", zoo_dir=tmp_path) == "c"
    got = json.loads((tmp_path / "models.json").read_text())
    assert [n for n, e in got.items() if e.get("default")] == ["c"]
    assert flag_default("f", target_bpp=0.06, zoo_dir=tmp_path) == "a"
    with pytest.raises(KeyError, match="no model of family"):
        flag_default("nope", zoo_dir=tmp_path)
    from zoo.store import set_default

    assert set_default("d", zoo_dir=tmp_path) == "d"  # a rate-controlled model: by name
    got = json.loads((tmp_path / "models.json").read_text())
    assert [n for n, e in got.items() if e.get("default")] == ["d"]
    with pytest.raises(KeyError, match="no model"):
        set_default("nope", zoo_dir=tmp_path)


def test_concurrent_registry_edits_keep_every_entry(tmp_path):
    """Two rungs exported at once both land in models.json (the edit holds a lock)."""
    import json
    import threading

    from zoo.store import ship_weights

    threads = [threading.Thread(target=ship_weights,
                                args=(bytes([i]) * 64, f"m{i}", "cdc", tmp_path))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(json.loads((tmp_path / "models.json").read_text())) == [f"m{i}" for i in range(8)]
