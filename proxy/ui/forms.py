"""The API's refusals of a form's body, as messages beside the form's fields."""

from __future__ import annotations

from typing import Iterable

from ..api.manage.errors import ApiError

__all__ = ["field_errors"]


def field_errors(exc: ApiError, fields: Iterable[str]) -> dict[str, str]:
    """``{"match": "…"}`` from the API's ``detail.fields`` (``match.0`` → ``match``) or its
    ``detail.field``; anything not about a form field goes under ``form``."""
    known = set(fields)
    detail = exc.detail if isinstance(exc.detail, dict) else {}
    items = detail.get("fields") or ([{"field": detail["field"], "message": exc.message}] if "field" in detail else [])
    errors: dict[str, str] = {}
    for item in items:
        key = str(item.get("field", "")).split(".", 1)[0]
        key = key if key in known else "form"
        message = str(item.get("message", exc.message))
        errors[key] = f"{errors[key]}; {message}" if key in errors else message
    return errors or {"form": exc.message}
