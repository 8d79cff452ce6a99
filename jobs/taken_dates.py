"""The HTTP listing's capture-date filter (``/images?taken_from=&taken_to=``): which keys
were taken in a date range, with the dates read once per archive size."""

from __future__ import annotations

from typing import Any

from jobs.contents_cli import DATE_PATTERN, list_items, taken_in


def date_problem(name: str, date: str | None) -> str | None:
    """Why ``date`` is not a YYYY, YYYY-MM or YYYY-MM-DD (None: it is, or is absent)."""
    if date is None or DATE_PATTERN.fullmatch(date):
        return None
    return f"{name} {date[:40]!r}: expected YYYY, YYYY-MM or YYYY-MM-DD"


class TakenDates:
    """key -> capture date of an archive's dated photos, read once (one metadata read a
    shard) and again only when the archive's record count changes."""

    def __init__(self) -> None:
        self._held: tuple[int, dict[str, str]] | None = None

    def keys_between(self, arch: Any, keys: list[str], first: str | None, last: str | None
                     ) -> list[str]:
        """``keys`` (in their order) of the photos taken within ``first`` .. ``last``."""
        n = len(arch)
        if self._held is None or self._held[0] != n:
            self._held = (n, {it["key"]: it["taken"] for it in list_items(arch, details=True)
                              if "taken" in it})
        dates = self._held[1]
        return [k for k in keys if taken_in(dates.get(k), first, last)]
