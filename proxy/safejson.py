"""Decoding JSON that came from outside: bounded nesting, bounded numbers.

Every request body, manifest, cursor and package config goes through ``loads`` so that no
input reaches the decoder's recursion limit (a ``RecursionError`` deep in the stack), Python's
integer-string limit (a bare ``ValueError``) or a non-finite float that cannot be written
back as JSON. Callers turn ``JsonError`` into the error shape of their API."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["JsonError", "loads", "MAX_DEPTH", "MAX_INT"]

# Deeper than any document algomint reads or writes (manifests nest 3-4 levels, request
# bodies and descriptors well under 20), shallow enough that decoding never recurses far.
MAX_DEPTH = 64
# Integers are int64 (manifest sizes, limits, ids); larger ones are refused, not rounded.
MAX_INT = 2**63 - 1
_MAX_INT_DIGITS = len(str(MAX_INT))


class JsonError(ValueError):
    """Input that is not acceptable JSON; the message says why, for the client."""


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS or abs(value := int(text)) > MAX_INT:
        raise JsonError(f"integer out of range (at most {_MAX_INT_DIGITS} digits, |n| <= 2^63-1)")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonError("number out of range")
    return value


def _constant(text: str) -> Any:
    raise JsonError(f"{text} is not JSON")


def _depth(document: Any) -> int:
    """Nesting depth, iteratively (the document may be as deep as the decoder allowed)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode ``data``; ``JsonError`` for malformed JSON, nesting deeper than ``max_depth``,
    integers beyond int64 and non-finite numbers."""
    try:
        document = json.loads(data, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise JsonError(f"nested deeper than {max_depth} levels") from None
    except JsonError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JsonError(str(exc)) from None
    if _depth(document) > max_depth:
        raise JsonError(f"nested deeper than {max_depth} levels")
    return document
