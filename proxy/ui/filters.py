"""Template filters: times, sizes, short digests."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

__all__ = ["FILTERS"]


def when(value: float | str | None) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, (int, float)):
        return "—"  # None, or a field this record does not have
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(value: int | None) -> str:
    if not isinstance(value, int):
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"


def short(digest: str | None) -> str:
    if not digest:
        return "—"
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:{hexpart[:12]}"


def percent(done: int | None, total: int | None) -> int:
    if not isinstance(total, int) or total <= 0:
        return 0
    return min(100, int(100 * (done if isinstance(done, int) else 0) / total))


FILTERS: dict[str, Callable[..., Any]] = {"when": when, "size": size, "short": short, "percent": percent}
