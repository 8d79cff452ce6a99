"""The gallery page of `cdc serve`, in a real browser: `cdc serve` (the CLI, in a
subprocess) on 127.0.0.1 on a small generated archive, Debian's headless Chromium driven
by selenium. Thumbnails load, the filter narrows the grid, a click opens the viewer and
the higher tiers replace the preview in place (other URL, other pixels), compare and
keyboard navigation work, a repeated request is answered 304, the page shows no server
path, and it fits a phone-sized window. Screenshots go to the test's tmp dir.

Skips, saying why, where chromium, chromedriver or selenium are missing
(``apt-get install -y chromium chromium-driver``; .ci/run installs them)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.archive.tier_settings import DEFAULT_TIERS
from tests.browser import (
    find_browser,
    headless_chromium,
    open_gallery,
    open_viewer,
    screenshot,
    tile_button,
    wait,
)
from tests.serve_helpers import CdcServe, generated_archive, http_get

N = 5  # images, plus one that fails when archived
BROWSER = find_browser()
pytestmark = [
    pytest.mark.skipif(isinstance(BROWSER, str), reason=f"browser tests: {BROWSER}"),
    pytest.mark.timeout(240),
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, codec) -> str:
    root = tmp_path_factory.mktemp("gallery")
    return generated_archive(root / "photos", str(root / "photos.zarr"), codec, N,
                             tiers=DEFAULT_TIERS)


@pytest.fixture(scope="module")
def served(archive: str, weights_file: str, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cdc-serve")
    with CdcServe(archive, model=weights_file, cache_dir=str(tmp / "cache"),
                  log=tmp / "serve.log", args=["--batch-wait-ms", "5"]) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    chrome, driver = BROWSER
    d = headless_chromium(chrome, driver, 1000, 700)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def tiles(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#grid .tile')].map((t) => t.dataset.key);")


def test_grid_thumbnails_filter_and_304(browser, served: str, archive: str, shots_dir: Path):
    from selenium.webdriver.common.by import By

    browser.set_window_size(1000, 700)
    open_gallery(browser, served, thumbs=N)
    keys = [f"img{i:03d}.png" for i in range(N)] + ["zz-broken.png"]
    assert tiles(browser) == keys
    assert browser.find_element(By.ID, "name").text == "photos.zarr"
    meta = browser.find_element(By.ID, "meta").text
    assert "6 records · 1 failed" in meta and "cdc-test" in meta, meta
    assert "preview (2 steps, γ 0" in meta and "high (16 steps, γ 0.8" in meta, meta
    assert browser.find_element(By.ID, "count").text == "6 images"
    broken = browser.find_element(By.CSS_SELECTOR, '.tile.failed[data-key="zz-broken.png"]')
    assert "failed when archived" in broken.text
    assert "not an image file" in broken.find_element(By.TAG_NAME, "button").get_attribute("title")
    sizes = browser.execute_script("return [...document.querySelectorAll('#grid img')]"
                                   ".map((i) => [i.naturalWidth, i.naturalHeight, i.src]);")
    assert len(sizes) == N and all(w > 0 and h > 0 for w, h, _ in sizes), sizes
    assert all(parse_qs(urlsplit(src).query)["tier"] == ["preview"] for _, _, src in sizes)
    page = browser.page_source
    assert str(Path(archive).parent) not in page and "/tmp/" not in page
    screenshot(browser, shots_dir / "grid.png")

    # the thumbnail again, as a browser revalidating it would: 304, nothing decoded
    src = sizes[0][2]
    status, headers, _ = http_get(src)
    assert status == 200 and headers["x-cdc-source"] == "cache"
    status, again, body = http_get(src, headers={"If-None-Match": headers["etag"]})
    assert (status, body, again["etag"]) == (304, b"", headers["etag"])

    box = browser.find_element(By.ID, "filter")
    box.send_keys("IMG003")  # case-insensitive substring
    wait(browser).until(lambda d: tiles(d) == ["img003.png"])
    assert browser.find_element(By.ID, "count").text == "1 image matching “IMG003”"
    box.clear()
    box.send_keys("broken")
    wait(browser).until(lambda d: tiles(d) == ["zz-broken.png"])
    box.clear()
    box.send_keys(" ")  # blank: everything again
    wait(browser).until(lambda d: tiles(d) == keys)

    taken = browser.find_element(By.ID, "taken")  # img001 was taken on 2021-07-04
    taken.send_keys("2021-06..2021-07")
    wait(browser).until(lambda d: tiles(d) == ["img001.png"])
    assert browser.find_element(By.ID, "count").text == "1 image taken 2021-06..2021-07"
    taken.clear()
    taken.send_keys("2020")
    wait(browser).until(lambda d: tiles(d) == [])
    taken.clear()
    taken.send_keys("July")  # not a date: the server's one line, shown
    wait(browser).until(lambda d: "expected YYYY" in d.find_element(By.ID, "error").text)
    taken.clear()
    taken.send_keys(" ")
    wait(browser).until(lambda d: tiles(d) == keys)

    browser.set_window_size(390, 800)  # a phone
    open_gallery(browser, served, thumbs=N)
    fit = browser.execute_script(
        "const g = document.getElementById('grid');"
        "return [document.documentElement.scrollWidth, innerWidth,"
        " getComputedStyle(g).gridTemplateColumns.split(' ').length];")
    assert fit[0] <= fit[1] and fit[2] >= 2, fit  # no sideways scrolling, several columns
    screenshot(browser, shots_dir / "grid-phone.png")
    print("screenshots:", shots_dir)


def test_viewer_refines_in_place(browser, served: str, shots_dir: Path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def press(key: str) -> None:  # to whatever has the focus, as a person would
        ActionChains(browser).send_keys(key).perform()

    browser.set_window_size(1000, 700)
    open_gallery(browser, served, thumbs=N)
    shown = open_viewer(browser, "img002.png", final_tier="high")
    assert [s["tier"] for s in shown] == ["preview", "standard", "high"], shown
    assert [parse_qs(urlsplit(s["url"]).query)["tier"][0] for s in shown] == [
        "preview", "standard", "high"]
    assert all((s["width"], s["height"]) == (64, 48) for s in shown), shown
    hashes = [s["hash"] for s in shown]
    assert hashes[0] != hashes[1] and hashes[1] != hashes[2] and hashes[0] != hashes[2], hashes
    label = browser.find_element(By.ID, "vlabel").text
    assert re.fullmatch(r"high · 16 steps · γ 0\.8 · [\d.]+ K?B read · \d+\.\d{3} bpp · "
                        r"(decoded in [\d.]+ (ms|s)|from the server's cache)", label), label
    links = browser.find_elements(By.CSS_SELECTOR, "#tiers a[download]")
    assert [parse_qs(urlsplit(a.get_attribute("href")).query)["tier"][0] for a in links] == [
        "preview", "standard", "high"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#tiers li.ready")
    assert len(rows) == 3 and "4 steps" in rows[1].text, [r.text for r in rows]
    screenshot(browser, shots_dir / "viewer.png")

    img = browser.find_element(By.ID, "vimg")
    browser.find_element(By.ID, "compare").click()  # the previous tier, in place
    wait(browser).until(lambda d: img.get_attribute("data-tier") == "standard")
    assert browser.find_element(By.ID, "vlabel").text.endswith("comparing with high")
    assert browser.execute_script("return window.__shots.at(-1).hash;") == hashes[1]
    press("c")  # and back
    wait(browser).until(lambda d: img.get_attribute("data-tier") == "high")

    vkey = browser.find_element(By.ID, "vkey")
    press(Keys.ARROW_RIGHT)
    wait(browser).until(lambda d: vkey.text == "img003.png")
    wait(browser, 120).until(lambda d: img.get_attribute("data-tier") == "high")
    press(Keys.ARROW_LEFT)
    wait(browser).until(lambda d: vkey.text == "img002.png")
    press(Keys.ESCAPE)
    viewer = browser.find_element(By.ID, "viewer")
    wait(browser).until(lambda d: not viewer.is_displayed())

    tile_button(browser, "zz-broken.png").click()  # a failed record says so, and why
    wait(browser).until(lambda d: viewer.is_displayed())
    assert browser.find_element(By.ID, "vlabel").text == (
        "failed when archived: not an image file (unrecognised format)")
    assert "/tmp/" not in browser.page_source
    press(Keys.ESCAPE)
    wait(browser).until(lambda d: not viewer.is_displayed())
