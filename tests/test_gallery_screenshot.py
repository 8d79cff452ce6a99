"""scripts/gallery-screenshot, the README's gallery picture, runs (issue 29): on a small
generated archive, into a temporary file, and the PNG it writes is the grid stacked over the
viewer, neither of them blank. A broken script (or a change to the gallery or the browser
steps it shares with tests/test_gallery.py) fails here, not when the picture is retaken.

Skips, saying why, where chromium, chromedriver or selenium are missing
(``apt-get install -y chromium chromium-driver``; .ci/run installs them)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.archive.tier_settings import DEFAULT_TIERS
from tests.browser import find_browser
from tests.serve_helpers import REPO, generated_archive
from zoo.cache import remember

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(isinstance(BROWSER, str), reason=f"browser tests: {BROWSER}")
N = 5
WIDTH, HEIGHT = 700, 560


@pytest.mark.timeout(600)  # on the test, as conftest's 300 s default is closer than a module mark
def test_gallery_screenshot_script(tmp_path: Path, codec, weights_file: str, monkeypatch):
    for k in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        monkeypatch.setenv(k, "60")  # Serve's 5 s/10 s kill its proxy on a loaded 2-core VM
    monkeypatch.setenv("RAY_raylet_start_wait_time_s", "120")  # Ray's 30 s, likewise
    url = generated_archive(tmp_path / "photos", str(tmp_path / "photos.zarr"), codec, N,
                            tiers=DEFAULT_TIERS, broken=False)
    # `cdc serve` finds the test model as it finds any non-shipped one: the local model cache
    assert remember(codec.weights_sha256, weights_file) is not None
    out, keep = tmp_path / "shot" / "gallery.png", tmp_path / "keep"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "gallery-screenshot"), "--archive", url,
         "--key", "img002.png", "--out", str(out), "--keep", str(keep),
         "--size", f"{WIDTH}x{HEIGHT}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        stdout, stderr = proc.communicate(timeout=540)
    finally:  # Ctrl-C, so the script stops its `cdc serve` (its own session) on the way out
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    assert stdout.strip().startswith(f"{out}: ") and stdout.strip().endswith(" KB")

    pic = Image.open(out)
    assert pic.format == "PNG" and pic.mode == "P", "a palette PNG, small enough for the README"
    grid, viewer = Image.open(keep / "grid.png"), Image.open(keep / "viewer.png")
    assert grid.size == viewer.size and grid.width == WIDTH  # the viewport (no window frame)
    px = np.asarray(pic.convert("RGB")).astype(np.int16)
    top = px.shape[0] - viewer.height  # rows of the grid kept above the viewer
    assert px.shape[1] == WIDTH and 0 < top <= grid.height, (px.shape, grid.size)
    # the two parts are the two screenshots (up to the palette), in that order
    g = np.asarray(grid.convert("RGB")).astype(np.int16)[:top]
    v = np.asarray(viewer.convert("RGB")).astype(np.int16)
    assert np.abs(px[:top] - g).mean() < 4 and np.abs(px[top:] - v).mean() < 4
    # neither is blank: thumbnails in the grid, the decoded image in the viewer
    for part in (px[:top], px[top:]):
        assert len(np.unique(part.reshape(-1, 3), axis=0)) > 24 and part.std() > 10
    rows = min(top, viewer.height)
    assert np.abs(px[:rows] - px[top:top + rows]).mean() > 5
