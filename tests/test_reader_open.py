"""The Python API opens an archive without being told its model (issue 29): ``Reader(archive)``
and ``open_archive(url)`` find the model that wrote it the way ``cdc get`` does (shipped, or
in the local model cache), a codec or model passed in is still checked against the archive,
and an archive of an unknown model is one line saying what to pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.archive import (
    Reader,
    archive_codec,
    encode_shard,
    open_archive,
    open_or_create,
    plan_inputs,
    plan_shards,
)
from storage import Archive, ArchiveError, ModelMismatchError
from tests.conftest import smooth_image
from zoo.cache import remember

pytestmark = pytest.mark.timeout(120)


def _archive(root: Path, codec, size: tuple[int, int] = (40, 56)) -> str:
    """Two generated images archived with ``codec`` (in-process, no Ray); returns the URL."""
    src = root / "imgs"
    src.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(smooth_image(*size, seed=i)).save(src / f"{i}.png")
    items, _ = plan_inputs(str(src))
    arch, _ = open_or_create(str(root / "a.zarr"), codec, shard_size=4)
    for plan in plan_shards(items, set(), set(), 4):
        list(encode_shard(codec, arch, plan))
    return arch.url


@pytest.fixture
def url(tmp_path: Path, codec) -> str:
    return _archive(tmp_path, codec)


def _pixels(data: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(data)))


def test_reader_without_codec_finds_the_model_in_the_local_cache(url: str, codec, weights_file):
    want = Reader(Archive.open(url), codec, cache=None, archive_cache=False).get("1.png", "preview")
    assert remember(codec.weights_sha256, weights_file) is not None
    reader = Reader(Archive.open(url), cache=None, archive_cache=False)
    assert reader.codec.weights_sha256 == codec.weights_sha256
    got = reader.get("1.png", "preview")
    assert got.source == "decoded" and np.array_equal(_pixels(got.data), _pixels(want.data))
    # open_archive: the same, from the URL alone
    assert np.array_equal(_pixels(open_archive(url).get("1.png", "preview").data),
                          _pixels(want.data))


def test_unknown_model_is_one_line_naming_the_archive_and_what_to_pass(url: str):
    with pytest.raises(ArchiveError) as e:
        Reader(Archive.open(url))
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "not a shipped model" in msg
    assert "model=" in msg and "codec=" in msg


def test_a_codec_or_model_given_is_still_checked(url: str, codec, weights_file, other_weights_file):
    from cdc import CDCCodec

    assert open_archive(url, model=weights_file).codec.weights_sha256 == codec.weights_sha256
    assert open_archive(url, codec).codec is codec
    with pytest.raises(ModelMismatchError, match="written with model"):
        open_archive(url, model=other_weights_file)
    with pytest.raises(ModelMismatchError, match="written with model"):
        Reader(Archive.open(url), CDCCodec.from_pretrained(other_weights_file))


def test_a_shipped_model_is_found_by_its_id(tmp_path: Path):
    """An archive of the default shipped model opens with no model named (the README's
    Python section on the README's archive does this on the sample images)."""
    from zoo import default_model, load_codec

    shipped = load_codec(default_model())
    url = _archive(tmp_path, shipped, size=(32, 32))
    arch = Archive.open(url, read_only=True)
    found = archive_codec(arch)
    assert found.weights_sha256 == shipped.weights_sha256
    rec = arch["0.png"]
    got = Reader(arch, found, cache=None, archive_cache=False).get("0.png", "standard")
    s = arch.tiers["standard"]
    want = shipped.decompress(rec.data, steps=s["steps"], gamma=s["gamma"], seed=s.get("seed", 0))
    assert np.array_equal(_pixels(got.data), np.asarray(want))
