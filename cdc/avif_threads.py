"""How many threads libavif's encoder gets: never one, so a stream's bytes do not depend on
the machine that wrote it.

libaom (through Pillow's libavif, speed 6) codes differently with one thread than with
several — up to 1.2 % in size at the same quality on Kodak and training photos, presumably
its multithreaded path taking other decisions — and identically at every count from two up
(measured 2 … 64). Pillow's default is every CPU the process may use, so a 1-CPU container
and a 16-core node wrote different streams of the same image at the same rate. Torch-free:
the classical baselines of ``cdc eval`` use it too.
"""

from __future__ import annotations

import os

#: The fewest encoder threads: at one, libaom's output differs (see the module's doc).
MIN_AVIF_THREADS = 2

_threads: int | None = None


def set_avif_threads(n: int | None) -> None:
    """Threads for AVIF encodes in this process (a Ray actor: its CPU share), never fewer
    than :data:`MIN_AVIF_THREADS`; None: every CPU the process may use."""
    if n is not None and n < 1:
        raise ValueError(f"AVIF threads must be >= 1, got {n}")
    global _threads
    _threads = n


def avif_threads() -> int:
    """The ``max_threads`` to pass to every AVIF encode."""
    if _threads is not None:
        n = _threads
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count() or 1
    return max(MIN_AVIF_THREADS, n)
