"""The README and docs/*.md run as written (issue 29): every fenced ``bash`` and ``python``
block is executed, in order per file, in a temporary folder holding a copy of ``samples/``
and a ``.venv`` that stands for the environment running these tests, so the docs cannot
drift from the code again. A block a user should not run here says so on the line before
its fence, with a reason reported as the skip reason under the block's name:

* ``<!-- not run: REASON -->`` real commands too heavy or needing what a test machine lacks
  (installs, training, Kodak evaluations, an S3 server, a cluster);
* ``<!-- illustrative: REASON -->`` a sketch with placeholders.

Blocks that are not code carry ``text`` or ``json``; a block with no language fails.
A few blocks are also checked for what they produce (``CHECKS``); the costly ones are
``slow`` (``SLOW``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
NOT_CODE = {"text", "json"}
MARKER = re.compile(r"^\s*<!--\s*(not run|illustrative):(.*?)-->\s*$")
FENCE = re.compile(r"^\s*```(\S*)\s*$")
BLOCK_TIMEOUT_S = 600
# a block may first run the blocks before it in its doc (README: the archive, then Python);
# per item, as conftest's 300 s default is closer than a module mark
ITEM_TIMEOUT_S = 2 * BLOCK_TIMEOUT_S + 60


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: tuple[str, str] | None  # (kind, reason) of the comment right before the fence

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUNNABLE and self.marker is None


def parse(text: str, doc: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a markdown text, and the problems with its markers (a marker
    without a reason or not right before a fence, an HTML comment before a fence that is no
    marker, a fence never closed): each one line naming the file and line."""
    lines = text.split("\n")
    found: list[Block] = []
    problems: list[str] = []
    used: set[int] = set()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            problems.append(f"{doc}:{i + 1}: fence never closed")
            break
        marker = None
        prev = lines[i - 1] if i > 0 else ""
        if mm := MARKER.match(prev):
            used.add(i - 1)
            marker = (mm.group(1), mm.group(2).strip())
            if not marker[1]:
                problems.append(f"{doc}:{i}: marker '{mm.group(1)}' gives no reason")
        elif prev.strip().startswith("<!--"):
            problems.append(f"{doc}:{i}: comment before a block is not a marker "
                            "('<!-- not run: REASON -->' or '<!-- illustrative: REASON -->')")
        found.append(Block(doc, i + 1, m.group(1).lower(), "\n".join(lines[i + 1:end]), marker))
        i = end + 1
    for k, line in enumerate(lines):
        if MARKER.match(line) and k not in used:
            problems.append(f"{doc}:{k + 1}: marker not on the line right before a fence")
    return found, problems


def all_blocks() -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    problems: list[str] = []
    for path in DOCS:
        b, p = parse(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
        blocks += b
        problems += p
    return blocks, problems


BLOCKS, PROBLEMS = all_blocks()


def find(doc: str, needle: str) -> list[Block]:
    return [b for b in BLOCKS if b.doc == doc and needle in b.code]


# -- what some blocks must produce, beyond exiting 0 ---------------------------------------
def _readme_archive(ws: Path, out: str) -> None:
    from PIL import Image

    from storage import Archive
    from zoo import default_model, registry

    assert "astronaut.png -> out/astronaut.png: 320x320, tier standard (" in out, out[-2000:]
    with Image.open(ws / "out/astronaut.png") as img:
        assert (img.format, img.size) == ("PNG", (320, 320))
    arch = Archive.open(str(ws / "out/demo.zarr"), read_only=True)
    assert sorted(arch) == sorted(p.name for p in (ws / "samples").glob("*.png"))
    # the README says the default shipped model wrote it
    sha = registry()[default_model()]["sha256"]
    assert arch.model_id == default_model() and sha in arch.weights_digest


def _jobs_archive(ws: Path, out: str) -> None:
    assert "astronaut.png -> out/astronaut.png: 320x320, tier standard (" in out, out[-2000:]


PNG_MAGIC = "b'\\x89PNG\\r\\n\\x1a\\n'"
SHELL_CHECKS: dict[tuple[str, str], Callable[[Path, str], None]] = {
    ("README.md", "cdc archive samples out/demo.zarr"): _readme_archive,
    ("docs/jobs.md", "cdc archive samples out/demo.zarr"): _jobs_archive,
}
PYTHON_CHECKS: dict[tuple[str, str], str] = {
    ("README.md", "open_archive("): f"""
import io
assert img.size == Image.open("samples/chelsea.png").size, img.size
assert again.weights_sha256 == codec.weights_sha256
assert reader.codec.weights_sha256 == codec.weights_sha256, "the default model wrote out/demo.zarr"
assert png[:8] == {PNG_MAGIC} and Image.open(io.BytesIO(png)).size == (320, 320)
""",
    ("docs/codec.md", "compress_batch"): """
assert img.size == photo.size and len(streams) == 3
assert streams[0] == data, "a batch codes each image as compress does"
""",
    ("docs/corrdiff.md", "corrdiff_paths"): """
assert out.size == img.size and codec.codec_id == "corrdiff"
assert codec.info(data)["corrdiff_paths"]
""",
    ("docs/diffc.md", "decompress_prefix"): """
assert preview.size == (64, 64) and 0 < n < len(data)
""",
    ("docs/evaluation.md", "encode_at_bpp("): """
assert available_codecs()["webp"] is None and out.size == img.size
assert abs(m.bpp - 0.25) < 0.1 and len(m.data) > 0, m
""",
    ("docs/jobs.md", "run_archive_job"): f"""
import os
assert png[:8] == {PNG_MAGIC}
assert len(os.listdir("out/photos")) == 4, os.listdir("out/photos")
assert reader.codec.weights_sha256 == open_archive("out/photos.zarr").codec.weights_sha256
""",
}
# each costs more than a few seconds (a Ray job, or a pixel-space model on the CPU)
SLOW = {
    ("docs/jobs.md", "cdc archive samples out/demo.zarr"),
    ("docs/jobs.md", "run_archive_job"),
    ("docs/codec.md", "compress_batch"),
    ("docs/corrdiff.md", "corrdiff_paths"),
    ("docs/diffc.md", "decompress_prefix"),
}


def _key(block: Block, table) -> tuple[str, str] | None:
    return next((k for k in table if k[0] == block.doc and k[1] in block.code), None)


# -- the workspaces: one temporary folder per doc, blocks run in order -----------------------
def env_prefix() -> Path:
    """The environment running the tests (a venv's root: ``bin/python``, ``bin/cdc``)."""
    return Path(sys.executable).parent.parent


@dataclass
class Workspace:
    root: Path
    done: dict[int, str]  # block line -> its output

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {**os.environ,
                "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
                "PYTHONPATH": os.pathsep.join(
                    [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
                "CDC_CACHE_DIR": str(self.root / ".cache" / "decoded"),
                # Ray's 30 s for a local node to start is too short on a loaded 2-core VM
                "RAY_raylet_start_wait_time_s": os.environ.get("RAY_raylet_start_wait_time_s",
                                                               "120"),
                "PYTHONUNBUFFERED": "1"}

    def run(self, block: Block) -> str:
        """Run ``block`` (after the blocks before it in its doc, which it may need);
        its stdout + stderr, or a failed assertion naming the block."""
        for earlier in BLOCKS:
            if earlier.doc == block.doc and earlier.line < block.line and earlier.runs \
                    and earlier.line not in self.done:
                self.run(earlier)
        if block.line in self.done:
            return self.done[block.line]
        if RUNNABLE[block.lang] == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", block.code]
        else:
            check = PYTHON_CHECKS.get(_key(block, PYTHON_CHECKS), "")  # type: ignore[arg-type]
            cmd = [sys.executable, "-c", block.code + "\n" + check]
        # its own process group, killed whole on a timeout (a `cdc archive` and its Ray
        # processes must not outlive the test)
        proc = subprocess.Popen(cmd, cwd=self.root, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block.name}: still running after {BLOCK_TIMEOUT_S} s")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        tail = "\n".join(out.splitlines()[-25:])
        assert proc.returncode == 0, f"{block.name}: exit {proc.returncode}:\n{tail}"
        self.done[block.line] = out
        return out


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory) -> dict[str, Workspace]:
    """doc -> a fresh folder with a copy of samples/ and .venv standing for this environment."""
    made: dict[str, Workspace] = {}
    for path in DOCS:
        doc = str(path.relative_to(REPO))
        root = tmp_path_factory.mktemp("docs-" + re.sub(r"\W", "-", doc))
        shutil.copytree(REPO / "samples", root / "samples")
        (root / ".venv").symlink_to(env_prefix(), target_is_directory=True)
        made[doc] = Workspace(root, {})
    return made


# -- the tests -----------------------------------------------------------------------------
def test_docs_have_blocks_and_markers_are_well_formed():
    assert not PROBLEMS, "\n".join(PROBLEMS)
    untagged = [b.name for b in BLOCKS if b.lang not in RUNNABLE and b.lang not in NOT_CODE]
    assert not untagged, ("blocks without a known language (bash, python; text or json for "
                          f"what is not code): {untagged}")
    marked_data = [b.name for b in BLOCKS if b.marker and b.lang in NOT_CODE]
    assert not marked_data, f"markers on blocks that are not code: {marked_data}"


def test_the_readme_core_blocks_run():
    """The README's archive-and-get command and its Python section are run, not marked away."""
    for needle in ("cdc archive samples out/demo.zarr", "open_archive("):
        found = find("README.md", needle)
        assert len(found) == 1 and found[0].runs, (needle, found)
    assert sum(b.runs for b in BLOCKS) >= 8


def test_check_and_slow_tables_name_existing_blocks():
    for table in (SHELL_CHECKS, PYTHON_CHECKS, SLOW):
        for doc, needle in table:
            found = find(doc, needle)
            assert len(found) == 1 and found[0].runs, f"{doc}: {needle!r} names {found}"


def test_parser_reports_bad_markers():
    text = "\n".join([
        "<!-- not run: installs -->", "```bash", "pip install x", "```",
        "<!-- illustrative: -->", "```python", "x", "```",
        "<!-- not-run: typo -->", "```bash", "y", "```",
        "<!-- illustrative: stray -->", "", "```", "tree", "```",
    ])
    blocks, problems = parse(text, "t.md")
    assert [(b.line, b.lang, b.marker) for b in blocks] == [
        (2, "bash", ("not run", "installs")), (6, "python", ("illustrative", "")),
        (10, "bash", None), (15, "", None)]
    assert [b.runs for b in blocks] == [False, False, True, False]
    assert problems == ["t.md:5: marker 'illustrative' gives no reason",
                        "t.md:9: comment before a block is not a marker ('<!-- not run: REASON "
                        "-->' or '<!-- illustrative: REASON -->')",
                        "t.md:13: marker not on the line right before a fence"]


def _params() -> list:
    out = []
    for b in BLOCKS:
        if b.lang not in RUNNABLE:
            continue
        marks = [pytest.mark.timeout(ITEM_TIMEOUT_S)]
        marks += [pytest.mark.slow] if _key(b, SLOW) else []
        out.append(pytest.param(b, id=b.name, marks=marks))
    return out


@pytest.mark.parametrize("block", _params())
def test_block_runs_as_written(block: Block, workspaces: dict[str, Workspace]):
    if block.marker is not None:
        pytest.skip(f"{block.name}: {block.marker[0]}: {block.marker[1]}")
    ws = workspaces[block.doc]
    out = ws.run(block)
    if (key := _key(block, SHELL_CHECKS)) is not None:
        SHELL_CHECKS[key](ws.root, out)
