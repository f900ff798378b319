"""Times in management API answers: one ISO 8601 form (UTC, ``Z``), as users and tokens show.

Stores keep epoch seconds (they sort and compare as numbers); answers convert named fields
on the way out, at any depth (a delivery's attempts, a chain list's file status)."""

from __future__ import annotations

from typing import Any

from .principals import iso

__all__ = ["iso", "iso_times"]


def iso_times(value: Any, *fields: str) -> Any:
    """``value`` with every numeric entry named in ``fields`` (in any nested object) as ISO 8601."""
    if isinstance(value, list):
        return [iso_times(item, *fields) for item in value]
    if isinstance(value, dict):
        return {key: iso(item) if key in fields and isinstance(item, (int, float)) else iso_times(item, *fields)
                for key, item in value.items()}
    return value
