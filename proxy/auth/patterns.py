"""Repository-name patterns: ``*`` is part of one path segment, ``**`` any number of segments.

``generic/*`` matches ``generic/face`` but not ``generic/face/v2``; ``generic/**`` matches
both, never ``generic`` itself (a trailing ``**`` needs at least one segment);
``a/**/b`` matches ``a/b`` and ``a/x/y/b``; ``**`` alone matches every repository."""

from __future__ import annotations

import re

__all__ = ["validate_pattern", "compile_pattern", "MAX_PATTERN"]

MAX_PATTERN = 255
# A segment: name characters and single `*` wildcards, or exactly `**`.
_SEGMENT_RE = re.compile(r"^(?:\*\*|[a-z0-9._*-]+)$")


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` unchanged, or raise ``ValueError`` saying what is wrong."""
    if not pattern or len(pattern) > MAX_PATTERN:
        raise ValueError(f"pattern must be 1 to {MAX_PATTERN} characters")
    for segment in pattern.split("/"):
        if not _SEGMENT_RE.match(segment) or ("**" in segment and segment != "**"):
            raise ValueError(
                f"invalid pattern segment {segment!r}: use lowercase name characters, `*` for one segment, "
                "`**` alone for any depth"
            )
    return pattern


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A regex that fully matches the repository names ``pattern`` covers."""
    validate_pattern(pattern)
    parts: list[str] = []
    segments = pattern.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            # One or more whole segments; the separator after it is part of the group.
            parts.append(r"[^/]+(?:/[^/]+)*" if last else r"(?:[^/]+/)*")
            continue
        parts.append(r"[^/]*".join(re.escape(piece) for piece in segment.split("*")) + ("" if last else "/"))
    return re.compile("".join(parts))
