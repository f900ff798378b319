"""Readable tables by default, raw JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

__all__ = ["Output"]


class Output:
    def __init__(self, json_mode: bool = False, stream=None) -> None:
        self.json_mode = json_mode
        self.stream = stream or sys.stdout

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, sort_keys=True, default=str), file=self.stream)

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        if self.json_mode:
            self.json(list(rows))
            return
        cells = [[_cell(row.get(c)) for c in columns] for row in rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip(), file=self.stream)
        for r in cells:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), file=self.stream)

    def item(self, value: dict[str, Any]) -> None:
        if self.json_mode:
            self.json(value)
            return
        width = max((len(k) for k in value), default=0)
        for key, val in value.items():
            print(f"{key.ljust(width)}  {_cell(val)}", file=self.stream)

    def message(self, text: str) -> None:
        if not self.json_mode:
            print(text, file=self.stream)

    def error(self, exc: Exception) -> None:
        print(f"algomint: {exc}", file=sys.stderr)
        detail = getattr(exc, "detail", None)
        if detail:
            print(json.dumps(detail, indent=2, default=str), file=sys.stderr)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)
