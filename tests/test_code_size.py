"""No function over 80 lines and no module over 500 in the five layers, going forward.

Long functions are where a newcomer stops reading (and where the CLI's option lists grew
unchecked). Today's offenders are listed with their current length: each may only shrink,
an entry that drops under the limit must be deleted (so the list only gets shorter), and
anything not listed must be within the limit. Run ``python tests/test_code_size.py`` for
the current table.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("cdc", "storage", "zoo", "pipeline", "jobs")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500

#: "path:function" → lines today (def line to last line; nested functions count on their own
#: and inside their parent). Shrink, then delete.
FUNCTION_ALLOWANCE: dict[str, int] = {}
#: path → lines today. Empty: every module is within the limit.
MODULE_ALLOWANCE: dict[str, int] = {}


def measure() -> tuple[dict[str, int], dict[str, int]]:
    """(functions over the limit, modules over the limit) of the layers: name → lines."""
    functions, modules = {}, {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text()
            if len(text.splitlines()) > MAX_MODULE_LINES:
                modules[rel] = len(text.splitlines())
            for node in ast.walk(ast.parse(text, rel)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        name = f"{rel}:{node.name}"
                        functions[name] = max(n, functions.get(name, 0))
    return functions, modules


def over(found: dict[str, int], allowance: dict[str, int]) -> list[str]:
    """What breaks the rule: new offenders, and listed ones that grew."""
    return [f"{k}: {n} lines" + (f" (allowed {allowance[k]}: only shrink)" if k in allowance
                                 else " (new: split it)")
            for k, n in sorted(found.items()) if n > allowance.get(k, 0)]


def stale(found: dict[str, int], allowance: dict[str, int]) -> list[str]:
    return [f"{k}: now within the limit, delete its entry" for k in sorted(allowance)
            if k not in found]


def test_no_function_over_the_limit_but_the_listed_ones():
    functions, _ = measure()
    assert not over(functions, FUNCTION_ALLOWANCE), "\n".join(over(functions, FUNCTION_ALLOWANCE))


def test_no_module_over_the_limit_but_the_listed_ones():
    _, modules = measure()
    assert not over(modules, MODULE_ALLOWANCE), "\n".join(over(modules, MODULE_ALLOWANCE))


def test_the_allowances_only_shrink():
    functions, modules = measure()
    gone = stale(functions, FUNCTION_ALLOWANCE) + stale(modules, MODULE_ALLOWANCE)
    assert not gone, "\n".join(gone)


def test_the_check_finds_a_long_function_and_a_grown_one():
    assert over({"a.py:f": 81}, {}) == ["a.py:f: 81 lines (new: split it)"]
    assert over({"a.py:f": 95}, {"a.py:f": 90}) == [
        "a.py:f: 95 lines (allowed 90: only shrink)"]
    assert over({"a.py:f": 85}, {"a.py:f": 90}) == []
    assert stale({}, {"a.py:f": 90}) == ["a.py:f: now within the limit, delete its entry"]


if __name__ == "__main__":
    fs, ms = measure()
    for k, n in sorted({**fs, **ms}.items(), key=lambda kv: -kv[1]):
        print(f"{n:5d}  {k}")
