"""What keeps a decode's fixed costs small (a preview's whole budget is ≈ 0.2 s after start-up):
PNGs written at a fast zlib level, losslessly; the base layer decoded without Pillow importing
every plugin; the CLI's parser without pydantic."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
from PIL import Image

from pipeline.files import PNG_LEVEL, encode_image


def test_png_is_written_at_the_fast_level_and_lossless():
    arr = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    arr[:, :48] = 128  # some compressible area, so levels differ
    img = Image.fromarray(arr)
    data = encode_image(img, "PNG")
    want, slow = io.BytesIO(), io.BytesIO()
    img.save(want, format="PNG", compress_level=PNG_LEVEL)
    img.save(slow, format="PNG")
    assert PNG_LEVEL < 6 and data == want.getvalue() and data != slow.getvalue()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), arr)


def test_base_decode_and_cli_parse_import_little():
    """A fresh process that decodes an AVIF base layer and parses a `cdc decompress` command
    line imports neither every Pillow plugin (TIFF stands for them) nor pydantic."""
    probe = """
import io, sys
import numpy as np
from PIL import Image
from cdc.refine.base_decode import decode_rgb
buf = io.BytesIO()
Image.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(buf, format="AVIF", quality=50)
assert decode_rgb(buf.getvalue(), 16, 24, 1).shape == (16, 24, 3)
from typer.main import get_command
from jobs.cli import app
cmd = get_command(app)
ctx = cmd.make_context("cdc", ["decompress", "a.cdc", "b.png", "--steps", "0"])
cmd.resolve_command(ctx, ["decompress"])[1].make_context("decompress", ["a.cdc", "b.png"])
print("PIL.TiffImagePlugin" in sys.modules, "pydantic" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"], out
