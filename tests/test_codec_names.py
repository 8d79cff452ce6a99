"""No codec is named outside its own package and the registry.

Generic code (zoo, storage, pipeline, jobs, cdc's shared modules) asks the registry
(:mod:`cdc.registry`) or a codec's declared capabilities, never ``if codec == "corrdiff"``;
so adding a codec needs its package, its registration and its test, nothing else. The
default codec's id (``DEFAULT_CODEC``, what files predating codec ids are) is the one
name generic code may use, and only through the registry.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cdc.registry import CODECS, DEFAULT_CODEC, entry

ROOT = Path(__file__).resolve().parents[1]
#: Codec ids generic code must not spell (the default one is also the toolkit's name).
NAMES = sorted(set(CODECS) - {DEFAULT_CODEC})


def _own_modules() -> set[Path]:
    """Files that belong to one codec: its trainer module (named in the registry) and the
    refine pair-cache builder its trainer runs."""
    own = {ROOT / (entry(c).trainer.replace(".", "/") + ".py") for c in CODECS}
    return own | {ROOT / "pipeline" / "training" / "refine_pairs.py"}


def _generic_files() -> list[Path]:
    files = [p for layer in ("zoo", "storage", "pipeline", "jobs")
             for p in sorted((ROOT / layer).rglob("*.py"))]
    files += [p for p in sorted((ROOT / "cdc").glob("*.py")) if p.name != "registry.py"]
    own = _own_modules()
    return [p for p in files if p not in own and "__pycache__" not in p.parts]


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value,
                                                                         ast.Constant):
                out.add(id(n.body[0].value))
    return out


def codec_names_in_code(path: Path) -> list[str]:
    """``file:line: 'name'`` for each string constant (not a docstring) equal to a codec id
    or naming one as a word (``"corrdiff-small"`` does not count: a model name)."""
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return [f"{rel}:{n.lineno}: {n.value!r}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
            and n.value in NAMES]


def test_generic_modules_name_no_codec():
    found = [hit for p in _generic_files() for hit in codec_names_in_code(p)]
    assert not found, ("codec-specific logic in a generic module; declare a capability or a "
                       "registry hook instead:\n" + "\n".join(found))


@pytest.mark.parametrize("path", ["cdc/weights.py", "zoo/loader.py", "zoo/store.py",
                                  "zoo/cache.py", "zoo/components.py"])
def test_weights_modules_do_not_even_mention_a_codec(path):
    """The issue's own check (``grep -rn corrdiff cdc/weights.py zoo/loader.py``), comments
    included, for every codec but the default."""
    text = (ROOT / path).read_text()
    hits = [f"{path}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
            for name in NAMES if re.search(rf"\b{name}\b", line, re.IGNORECASE)]
    assert not hits, "\n".join(hits)


def test_the_check_finds_a_codec_name(tmp_path):
    """The check can fail: a module comparing against a codec id is caught."""
    bad = tmp_path / "probe.py"
    bad.write_text(f'def f(obj):\n    """{NAMES[0]} in a docstring is fine."""\n'
                   f'    return obj.get("codec") == "{NAMES[0]}"\n')
    assert codec_names_in_code(bad) == [f"probe.py:3: {NAMES[0]!r}"]
