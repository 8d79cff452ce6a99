"""Layering: imports point down, no module imports itself round a cycle, cdc does no I/O.

Layers, bottom up: ``cdc`` (codecs, tensors <-> bytes, no I/O) and ``storage`` (bytes <->
zarr archives, no torch) are independent leaves; ``zoo`` (reading and shipping weights
files) sits on ``cdc``; ``pipeline`` composes them; ``jobs`` (CLI, Ray) is the top. Two kinds
of check:

* **Fresh interpreters**: each layer's modules are all imported in a new Python process,
  which then must not have loaded a forbidden package (this sees transitive imports, e.g.
  a third-party module that drags torch into storage).
* **Static import graph** (``ast`` over the sources): every import of every module, at
  module top level (run at import time) or deferred (inside a function, or under
  ``if TYPE_CHECKING:``). Upward imports are refused whatever their kind; a cycle of
  top-level imports is always a failure, and a cycle through deferred imports is one too
  unless it is listed below. Failures name the module chain. Inside ``pipeline`` the same
  holds one level up: its parts (``archive``, ``training``, ``evaluation``, ``metrics``
  and the shared ``files``/``sources``) import one another without a cycle.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("cdc", "storage", "zoo", "pipeline", "jobs")

#: What each layer must never import (project layers and third-party packages).
FORBIDDEN: dict[str, set[str]] = {
    "cdc": {"storage", "zoo", "pipeline", "jobs"},
    "storage": {"cdc", "zoo", "pipeline", "jobs", "torch", "torchvision", "compressai"},
    "zoo": {"storage", "pipeline", "jobs"},
    "pipeline": {"jobs"},
    "jobs": set(),
}

#: cdc is tensors <-> bytes: reading files and URLs belongs to pipeline/jobs.
IO_MODULES = {"fsspec", "zarr", "s3fs", "boto3", "botocore", "requests", "aiohttp",
              "urllib.request", "http.client"}
FILE_METHODS = {"read_bytes", "read_text", "write_bytes", "write_text"}

#: Deliberate exceptions, each with its reason (delete an entry when its finding is gone;
#: test_known_findings_still_exist says so).
#: ``BaseCodec.from_pretrained`` (documented API, used by the tests) delegates to
#: ``zoo.load_codec`` inside the method: the zoo does the reading, cdc none.
KNOWN_UPWARD: set[tuple[str, str]] = {("cdc.base", "zoo")}
KNOWN_CDC_CYCLES: set[tuple[str, ...]] = set()
KNOWN_CDC_IO: set[tuple[str, str]] = set()


# -- the static import graph --------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # a project module, or a dotted external name
    deferred: bool  # inside a function or under TYPE_CHECKING: not run at import time
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _sources() -> dict[str, Path]:
    """Every module of the four layers: dotted name -> file."""
    out = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            if "__pycache__" not in path.parts:
                out[_module_name(path)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, deferred: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``node`` with whether it runs later than the module's import."""
    for child in ast.iter_child_nodes(node):
        later = deferred or isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        )
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.body:
                yield sub, True
                yield from _walk(sub, True)
            for sub in child.orelse:
                yield sub, later
                yield from _walk(sub, later)
            continue
        yield child, later
        yield from _walk(child, later)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    is_pkg = _sources()[module].name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def _imports() -> tuple[Import, ...]:
    mods = _sources()
    out = []
    for module, path in mods.items():
        for node, deferred in _walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node)
                # ``from pkg import mod`` imports the submodule; ``from mod import name``
                # imports ``mod``.
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            out += [Import(module, t, deferred, node.lineno) for t in targets if t]
    return tuple(out)


def _under(name: str, prefixes: set[str]) -> str | None:
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def _cycles(top_level_only: bool) -> dict[tuple[str, ...], str]:
    """Import cycles among project modules: sorted members -> "a -> b -> a"."""
    mods = _sources()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for imp in _imports():
        if imp.target in mods and not (top_level_only and imp.deferred) \
                and not (imp.deferred and (imp.module, imp.target) in KNOWN_UPWARD):
            graph[imp.module].add(imp.target)
    return _graph_cycles(graph)


def _graph_cycles(graph: dict[str, set[str]]) -> dict[tuple[str, ...], str]:
    """The cycles of a graph (node -> the nodes it points to; every node a key): each
    strongly connected component's sorted members -> "a -> b -> a" (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1 or v in graph[v]:
                sccs.append(sorted(scc))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for m in sorted(graph):
            if m not in index:
                strongconnect(m)
    finally:
        sys.setrecursionlimit(limit)
    return {tuple(scc): _chain(graph, scc) for scc in sccs}


def _chain(graph: dict[str, set[str]], scc: list[str]) -> str:
    """One cycle through the component's first module, as ``a -> b -> a``."""
    members, start = set(scc), scc[0]
    path, seen = [start], {start}

    def dfs(v: str) -> bool:
        for w in sorted(graph[v] & members):
            if w == start:
                return True
            if w not in seen:
                seen.add(w)
                path.append(w)
                if dfs(w):
                    return True
                path.pop()
        return False

    dfs(start)
    return " -> ".join([*path, start])


def _cdc_io() -> dict[tuple[str, str], str]:
    """File and network access in cdc: (module, what) -> "file:line"."""
    out: dict[tuple[str, str], str] = {}
    for imp in _imports():
        if imp.module.split(".")[0] == "cdc" and (lib := _under(imp.target, IO_MODULES)):
            where = f"{_sources()[imp.module].relative_to(ROOT)}:{imp.line}"
            out.setdefault((imp.module, f"imports {lib}"), where)
    for module, path in _sources().items():
        if module.split(".")[0] != "cdc":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            f, what = node.func, None
            if isinstance(f, ast.Name) and f.id == "open":
                what = "calls open()"
            elif isinstance(f, ast.Attribute):
                owner = f.value.id if isinstance(f.value, ast.Name) else None
                if f.attr in FILE_METHODS:
                    what = f"calls .{f.attr}()"
                elif owner in {"fsspec", "os", "io", "resources"} and f.attr in {"open", "files"}:
                    what = f"calls {owner}.{f.attr}()"
            if what:
                out.setdefault((module, what), f"{path.relative_to(ROOT)}:{node.lineno}")
    return out


# -- the tests ----------------------------------------------------------------------------
_CHILD = r"""
import importlib, json, sys
mods, forbidden, root = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]

def loaded():
    return {f for f in forbidden for m in list(sys.modules) if m == f or m.startswith(f + ".")}

seen, blame, errors, elsewhere = loaded(), {}, {}, {}
early = sorted(seen)
for m in mods:
    try:
        mod = importlib.import_module(m)
        where = getattr(mod, "__file__", None) or ""
        if not where.startswith(root):
            elsewhere[m] = where
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors[m] = f"{type(e).__name__}: {e}"
    now = loaded()
    for f in sorted(now - seen):
        blame[f] = m
    seen = now
print(json.dumps({"early": early, "blame": blame, "errors": errors, "elsewhere": elsewhere}))
"""


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_in_a_fresh_interpreter(layer: str) -> None:
    """Importing every module of a layer loads no forbidden package, and works."""
    mods = sorted(m for m in _sources() if m.split(".")[0] == layer)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(mods), json.dumps(sorted(FORBIDDEN[layer])),
         str(ROOT)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not res["errors"], f"{layer}: modules that fail to import: {res['errors']}"
    assert not res["elsewhere"], f"{layer}: imported from outside {ROOT}: {res['elsewhere']}"
    assert not res["early"], f"interpreter start-up already loads {res['early']}"
    assert not res["blame"], (
        f"{layer} must not import {sorted(FORBIDDEN[layer])}; loaded by importing: "
        + ", ".join(f"{f} (first after {m})" for f, m in sorted(res["blame"].items()))
    )


def test_no_upward_imports() -> None:
    """No module imports a layer above it (or a package its layer forbids), even lazily."""
    bad = [
        f"{_sources()[i.module].relative_to(ROOT)}:{i.line}: {i.module} imports {i.target}"
        + (" (deferred)" if i.deferred else "")
        for i in _imports()
        if _under(i.target, FORBIDDEN[i.module.split(".")[0]])
        and not (i.deferred and (i.module, i.target) in KNOWN_UPWARD)
    ]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_top_level_import_cycle() -> None:
    """Modules that import each other at import time depend on import order: none may."""
    found = _cycles(top_level_only=True)
    assert not found, "top-level import cycles:\n" + "\n".join(found.values())


def test_no_import_cycle() -> None:
    """Deferred imports (in functions, under TYPE_CHECKING) hide cycles; only the listed
    known ones inside cdc are tolerated."""
    found = {k: v for k, v in _cycles(top_level_only=False).items() if k not in KNOWN_CDC_CYCLES}
    assert not found, "import cycles (through deferred imports):\n" + "\n".join(found.values())


def _pipeline_part(module: str) -> str | None:
    """The part of pipeline a module belongs to: its subpackage (``pipeline.archive``,
    ``pipeline.training``, ``pipeline.evaluation``, ``pipeline.metrics``) or, for a shared
    top-level module, the module itself (``pipeline.files``); None outside pipeline."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipeline" and len(parts) > 1 else None


def test_pipeline_parts_import_without_a_cycle() -> None:
    """Inside pipeline, the subpackages and the shared modules import one another in one
    direction only (deferred imports included), so each part can be read without the
    others above it."""
    assert _graph_cycles({"a": {"b"}, "b": {"a"}}) == {("a", "b"): "a -> b -> a"}
    graph: dict[str, set[str]] = {}
    for imp in _imports():
        a, b = _pipeline_part(imp.module), _pipeline_part(imp.target)
        if a and b:
            graph.setdefault(a, set())
            graph.setdefault(b, set())
            if a != b:
                graph[a].add(b)
    assert {"pipeline.archive", "pipeline.training", "pipeline.evaluation"} <= set(graph)
    found = _graph_cycles(graph)
    assert not found, "pipeline's parts import in a cycle:\n" + "\n".join(found.values())


def test_cdc_does_no_io() -> None:
    """cdc turns tensors into bytes and back; files and URLs are the upper layers' job."""
    found = {k: v for k, v in _cdc_io().items() if k not in KNOWN_CDC_IO}
    assert not found, "file/network access in cdc:\n" + "\n".join(
        f"{where}: {module} {what}" for (module, what), where in sorted(found.items())
    )


def test_known_findings_still_exist() -> None:
    """An allow-list entry whose finding is gone must be deleted, so it cannot hide a new one."""
    assert all(m[0].startswith("cdc.") for m in (*KNOWN_CDC_CYCLES, *KNOWN_CDC_IO))
    upward = {(i.module, i.target) for i in _imports() if i.deferred}
    stale = sorted(KNOWN_UPWARD - upward)
    stale += sorted(KNOWN_CDC_CYCLES - set(_cycles(top_level_only=False)))
    stale += sorted(KNOWN_CDC_IO - set(_cdc_io()))
    assert not stale, f"fixed: delete these from tests/test_layering.py's allow-lists: {stale}"
