"""Helpers the identity resources share: who is asking, may they manage, store errors."""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from typing import Iterator

from aiohttp import web

from ...auth.store import Conflict, NotFound
from ...oci.errors import Errors, RegistryError
from ...service.policy import ANONYMOUS, Action, Principal
from ..state import PRINCIPAL
from .errors import ApiError
from .router import authorize

__all__ = ["principal_of", "require_authenticated", "can_manage", "require_self_or_manager", "store_errors", "iso"]


def principal_of(request: web.Request) -> Principal:
    return request.get(PRINCIPAL) or ANONYMOUS


def require_authenticated(request: web.Request) -> Principal:
    principal = principal_of(request)
    if principal.is_anonymous:
        raise RegistryError(Errors.UNAUTHORIZED, message="this resource needs credentials")
    return principal


async def can_manage(request: web.Request) -> bool:
    """True when the policy allows registry-wide ``manage`` (admins)."""
    try:
        await authorize(request, Action.MANAGE, None)
    except RegistryError:
        return False
    return True


async def require_self_or_manager(request: web.Request, name: str) -> Principal:
    """The caller may act on account ``name``: it is theirs, or they manage users."""
    principal = principal_of(request)
    if principal.is_anonymous or principal.name != name:
        await authorize(request, Action.MANAGE, None)
    return principal


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Store outcomes in the management error shape."""
    try:
        yield
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except Conflict as exc:
        raise ApiError(409, str(exc)) from None
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
