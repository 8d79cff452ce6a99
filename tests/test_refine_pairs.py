"""The refine codec's training pairs: random settings or the codec's own rate search, one or
several caches read as one (tiny images; no shared data)."""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import pytest
from conftest import smooth_image
from PIL import Image

from cdc.refine import base_layer
from cdc.refine.config import REFINE_CONFIGS
from pipeline.training.refine_pairs import PairCrops, build_cache, pairs_of
from pipeline.training.train_refine import RefineTrainConfig, RefineTrainer

CFG = REFINE_CONFIGS["refine-latent"]


def _photos(folder, n: int = 3, h: int = 96, w: int = 144):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(smooth_image(h, w, seed=i)).save(folder / f"p{i}.png")
    return folder


def _drawn_rate(name: str, lo: float, hi: float) -> float:
    rng = random.Random(int(hashlib.sha1(name.encode()).hexdigest(), 16))
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def test_rate_matched_pairs_are_the_bases_the_encoder_makes():
    arr = smooth_image(96, 144, seed=4)
    x, base, bpp = pairs_of(arr, "set/p.png", CFG, 32, variants=1, crops=2, rates=(0.05, 0.4))
    rate = _drawn_rate("set/p.png", 0.05, 0.4)
    choice = base_layer.search(arr, int(rate * 96 * 144 / 8), CFG)
    assert 0.05 <= rate <= 0.4
    assert bpp[0] == pytest.approx(8 * len(choice.data) / (96 * 144)) and bpp[0] <= rate
    want = base_layer.decode_choice(choice, 96, 144)[0]
    want = want.add(1).mul(127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    for i in range(2):  # every crop of the base is the same window of the encoder's decode
        hits = [(top, left) for top in range(96 - 31) for left in range(144 - 31)
                if np.array_equal(arr[top:top + 32, left:left + 32], x[i])]
        assert any(np.array_equal(want[top:top + 32, left:left + 32], base[i])
                   for top, left in hits)


def test_a_cache_calls_back_on_each_new_shard_and_refuses_a_bad_rate_range(tmp_path):
    photos = _photos(tmp_path / "photos")
    seen = []
    build_cache([str(photos)], tmp_path / "c", CFG, crop=32, variants=1, crops=1,
                rates=(0.05, 0.3), after_shard=seen.append)
    assert [p.name for p in seen] == ["shard-0000.npz"]
    assert len(np.load(seen[0])["x"]) == 3
    build_cache([str(photos)], tmp_path / "c", CFG, crop=32, variants=1, crops=1,
                rates=(0.05, 0.3), after_shard=seen.append)
    assert len(seen) == 1  # resumed: nothing new, no call
    with pytest.raises(ValueError, match="pair rates"):
        build_cache([str(photos)], tmp_path / "d", CFG, rates=(0.3, 0.05))


def _shard(folder, k: int, n: int, value: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    x = np.full((n, 32, 32, 3), value, np.uint8)
    np.savez(folder / f"shard-{k:04d}.npz", x=x, base=x // 2, bpp=np.full(n, 0.1, np.float32))


def test_several_caches_read_as_one_and_each_takes_in_new_shards(tmp_path):
    _shard(tmp_path / "a", 0, 3, 10)
    _shard(tmp_path / "b", 0, 2, 200)
    data = PairCrops([tmp_path / "a", tmp_path / "b"], 16, seed=0)
    assert len(data.x) == 5 and sorted(set(data.x[:, 0, 0, 0])) == [10, 200]
    _shard(tmp_path / "b", 1, 4, 90)
    data.refresh()
    assert len(data.x) == 9 and len(data.base) == 9
    values = {int(data[i][0][0, 0, 0].mul(127.5).add(127.5).round()) for i in range(200)}
    assert values == {10, 200, 90}  # draws from every shard of every cache
    with pytest.raises(FileNotFoundError, match="no pair shards"):
        PairCrops([tmp_path / "none"], 16)


def test_a_run_refuses_an_extra_cache_with_no_shards_naming_it(tmp_path):
    _shard(tmp_path / "a", 0, 3, 10)
    cfg = RefineTrainConfig(model_config="refine-small", sources=[str(tmp_path)],
                            pair_cache=str(tmp_path / "a"),
                            extra_pair_caches=[str(tmp_path / "missing")], pair_crop=32,
                            crop=16, batch_size=2, steps=1, validation_split="")
    trainer = RefineTrainer(cfg, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="missing"):
        trainer.dataset(0)
    _shard(tmp_path / "b", 0, 2, 200)
    cfg.extra_pair_caches = [str(tmp_path / "b"), str(tmp_path / "a")]  # "a" is read once
    assert len(RefineTrainer(cfg, tmp_path / "run2").dataset(0).x) == 5


def test_shards_built_in_worker_processes_are_the_ones_one_process_builds(tmp_path,
                                                                         monkeypatch):
    import pipeline.training.refine_pairs as rp

    monkeypatch.setattr(rp, "SHARD_IMAGES", 2)  # 5 photos: 3 shards
    photos = _photos(tmp_path / "photos", n=5)
    seen = []
    one = build_cache([str(photos)], tmp_path / "one", CFG, crop=32, variants=2, crops=2)
    two = build_cache([str(photos)], tmp_path / "two", CFG, crop=32, variants=2, crops=2,
                      workers=2, after_shard=seen.append)
    assert sorted(p.name for p in seen) == ["shard-0000.npz", "shard-0001.npz",
                                           "shard-0002.npz"]
    for name in ("shard-0000.npz", "shard-0001.npz", "shard-0002.npz"):
        a, b = np.load(one / name), np.load(two / name)
        for key in ("x", "base", "bpp"):
            assert np.array_equal(a[key], b[key])
    assert len(np.load(two / "shard-0002.npz")["x"]) == 4  # the last shard: one photo
