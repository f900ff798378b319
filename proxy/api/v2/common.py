"""Small request-parsing helpers shared by the /v2 handlers."""

from __future__ import annotations

import re

from aiohttp import web

from ...oci.errors import Errors, RegistryError
from ...oci.reference import parse_digest, validate_name
from ..state import CONFIG, PRINCIPAL

__all__ = ["repo_name", "digest_param", "location", "actor", "page_size", "usable_range"]

MAX_PAGE = 10_000
# One ``bytes=`` range-spec (RFC 9110 §14.1.1): ``first-last``, ``first-`` or ``-suffix``.
_SINGLE_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(?:\d+-\d*|-\d+)\s*$")


def repo_name(request: web.Request) -> str:
    return validate_name(request.match_info["name"])


def digest_param(value: str | None, error=Errors.DIGEST_INVALID) -> str:
    if value is None:
        raise RegistryError(error, message="digest parameter required")
    return str(parse_digest(value, error))


def location(request: web.Request, path: str) -> str:
    """Relative URLs unless ``server.public_url`` asks for absolute ones."""
    public = request.app[CONFIG].server.public_url
    return f"{public.rstrip('/')}{path}" if public else path


def actor(request: web.Request) -> str | None:
    principal = request.get(PRINCIPAL)
    return principal.name if principal else None


def page_size(request: web.Request) -> int | None:
    raw = request.query.get("n")
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_PAGE:
        raise RegistryError(Errors.PAGINATION_INVALID, {"n": raw[:20], "max": MAX_PAGE})
    return int(raw)


def usable_range(header: str | None) -> str | None:
    """The ``Range`` header if it is one well-formed byte range, else ``None``.

    RFC 9110 §14.2: a server ignores a Range it cannot parse or whose unit it does not
    know, and may ignore any other; a multi-range request is answered with the whole
    blob (200) rather than a multipart body no registry client reads."""
    if header is None or not _SINGLE_RANGE_RE.match(header):
        return None
    return header.replace(" ", "").replace("\t", "")
