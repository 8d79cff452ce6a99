"""Headless Chromium for the gallery: Debian's ``chromium`` and ``chromium-driver`` driven
with selenium, and the steps that tests/test_gallery.py and scripts/gallery-screenshot
both take (open the grid, open the viewer and follow its refinement, screenshot).

Nothing is downloaded: the browser and its driver are the system's (``CDC_CHROMIUM`` and
``CDC_CHROMEDRIVER`` name others); :func:`find_browser` says why they cannot be used."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

APT_HINT = "apt-get install -y chromium chromium-driver"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# the viewer's <img> fires "cdc:shown" each time a tier replaces the one before: record the
# tier, URL and a hash of the pixels it shows at that moment
RECORD_SHOTS_JS = """
if (!window.__shots) {
  window.__shots = [];
  document.getElementById('vimg').addEventListener('cdc:shown', (e) => {
    const img = e.target, c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const px = g.getImageData(0, 0, c.width, c.height).data;
    let h = 0;
    for (let i = 0; i < px.length; i++) h = (Math.imul(h, 31) + px[i]) | 0;
    window.__shots.push({tier: e.detail.tier, url: e.detail.url, width: img.naturalWidth,
                         height: img.naturalHeight, hash: h});
  });
}
"""
THUMBS_LOADED_JS = """
return [...document.querySelectorAll('#grid .tile img')]
  .filter((img) => img.complete && img.naturalWidth > 0).length;
"""
TILE_BUTTON_JS = """
const tile = [...document.querySelectorAll('#grid .tile')]
  .find((t) => t.dataset.key === arguments[0]);
return tile ? tile.querySelector('button') : null;
"""


def find_browser() -> tuple[str, str] | str:
    """``(chromium, chromedriver)``, or why the browser tests cannot run here."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    chrome = os.environ.get("CDC_CHROMIUM") or next(
        (p for name in CHROMIUM_NAMES if (p := shutil.which(name))), None)
    driver = os.environ.get("CDC_CHROMEDRIVER") or shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", chrome), ("chromedriver", driver)) if not p]
    if missing:
        return f"{' and '.join(missing)} not installed ({APT_HINT})"
    return chrome, driver  # type: ignore[return-value]


def headless_chromium(chrome: str, driver: str, width: int = 1100, height: int = 720) -> Any:
    """A selenium driver for a headless Chromium with a window of ``width`` x ``height``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--disable-background-networking",
                "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
                "--mute-audio", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait(driver: Any, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1)


def open_gallery(driver: Any, url: str, thumbs: int, timeout: float = 90) -> None:
    """Open the gallery at ``url`` and wait until ``thumbs`` thumbnails have loaded."""
    driver.get(url.rstrip("/") + "/")
    wait(driver, timeout).until(lambda d: d.execute_script(THUMBS_LOADED_JS) >= thumbs)


def tile_button(driver: Any, key: str) -> Any:
    return driver.execute_script(TILE_BUTTON_JS, key)


def open_viewer(driver: Any, key: str, final_tier: str, timeout: float = 120) -> list[dict]:
    """Click ``key``'s thumbnail and wait until the viewer shows ``final_tier``; returns
    what it showed on the way (``tier``, ``url``, ``width``, ``height``, pixel ``hash``)."""
    from selenium.webdriver.common.by import By

    driver.execute_script(RECORD_SHOTS_JS)
    driver.execute_script("window.__shots.length = 0;")
    tile_button(driver, key).click()
    img = driver.find_element(By.ID, "vimg")
    wait(driver, timeout).until(lambda d: img.get_attribute("data-tier") == final_tier)
    return driver.execute_script("return window.__shots;")


def screenshot(driver: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"could not save a screenshot to {path}")
    return path
