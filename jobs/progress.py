"""Progress bar and summary table of the Ray jobs (on stderr / stdout, via rich)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Counters:
    """Running totals of a job; fed with the workers' progress events."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.images = self.ok = self.failed = 0
        self.bytes_in = self.bytes_out = self.pixels = 0
        self.t0 = time.perf_counter()

    def add(self, ev: dict[str, Any]) -> None:
        self.images += ev.get("images", 0)
        self.ok += ev.get("ok", 0)
        self.failed += ev.get("failed", 0)
        self.bytes_in += ev.get("bytes_in", 0)
        self.bytes_out += ev.get("bytes_out", 0)
        self.pixels += ev.get("pixels", 0)

    def subtract(self, ev: dict[str, Any]) -> None:
        """Undo a lost attempt's partial progress (its shard is re-done)."""
        self.add({k: -v for k, v in ev.items() if isinstance(v, int)})

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def bpp(self) -> float:
        return 8 * self.bytes_out / self.pixels if self.pixels else 0.0


class ProgressBar:
    """images done/total, images/s, MB in, MB out, bpp so far, ETA. No-op when disabled."""

    def __init__(self, counters: Counters, description: str, enabled: bool | None = None,
                 unit: str = "img") -> None:
        self.c = counters
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._p = None
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.unit = unit
        self._p = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=12),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True), transient=False, refresh_per_second=4,
        )
        self._task = self._p.add_task(description, total=counters.total, info=self._info())
        self._p.start()

    def _info(self) -> str:
        c = self.c
        rate = c.rate
        left = max(0, c.total - c.images)
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        return (f"{c.images}/{c.total} {self.unit} {rate:.1f}/s in {c.bytes_in / 1e6:.1f} MB "
                f"out {c.bytes_out / 1e6:.2f} MB {c.bpp:.3f} bpp ETA {eta}")

    def refresh(self) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=self.c.images, info=self._info())

    def close(self) -> None:
        if self._p is not None:
            self.refresh()
            self._p.stop()
            self._p = None


def summary_table(title: str, rows: list[tuple[str, str]]):
    """A two-column table; text is shown as is (names escaped, no rich markup)."""
    from rich.markup import escape
    from rich.table import Table

    from jobs.text import printable

    t = Table(title=escape(printable(title)), show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    for k, v in rows:
        t.add_row(escape(printable(k)), escape(printable(v)))
    return t


def print_table(table) -> None:
    from rich.console import Console

    Console().print(table)


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"
