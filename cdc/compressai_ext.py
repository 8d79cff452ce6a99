"""CompressAI's compiled extensions (``compressai.ans``, ``compressai._CXX``) without its package.

``import compressai.ans`` runs ``compressai/__init__.py`` first, which imports every
CompressAI subpackage, among them its point-cloud datasets: torch_geometric, and through it
torch._dynamo, about 3-4 s of a fresh process on this machine (``python -X importtime``).
DiffC needs none of that: it entropy-codes its chunk indices with the rANS coder and one
CDF helper, two self-contained pybind11 modules (they link no torch and import nothing).

:func:`extension` loads such a module from the installed package, unchanged, with the
standard import machinery (``ExtensionFileLoader``), and registers it under its own name
in ``sys.modules``. Nothing of CompressAI is patched or copied: if ``compressai`` is
imported later in the process (a CDC codec), its own ``from compressai.ans import …`` and
``from compressai._CXX import …`` find these very modules there. Whenever anything is
unusual (CompressAI already imported, the package or the file not found) it falls back
to the ordinary import.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

_NAMES = ("ans", "_CXX")


def extension(name: str) -> ModuleType:
    """``compressai.<name>`` for ``name`` in ("ans", "_CXX"), without the package init."""
    if name not in _NAMES:
        raise ValueError(f"not a CompressAI extension module: {name!r}")
    full = f"compressai.{name}"
    if full in sys.modules:
        return sys.modules[full]
    if "compressai" in sys.modules:  # the package is there anyway: the ordinary import
        return importlib.import_module(full)
    spec = importlib.util.find_spec("compressai")  # finds, does not import, a top-level package
    locations = list(spec.submodule_search_locations or []) if spec else []
    for where in locations:
        finder = importlib.machinery.FileFinder(
            where, (importlib.machinery.ExtensionFileLoader,
                    importlib.machinery.EXTENSION_SUFFIXES))
        sub = finder.find_spec(full)
        if sub is None or sub.loader is None:
            continue
        module = importlib.util.module_from_spec(sub)
        sys.modules[full] = module
        try:
            sub.loader.exec_module(module)
        except BaseException:
            del sys.modules[full]
            raise
        return module
    return importlib.import_module(full)


__all__ = ["extension"]
