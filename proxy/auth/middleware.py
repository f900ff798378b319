"""Authentication on every ``/v2`` and ``/api`` request, and the Bearer challenge.

Sets ``request[PRINCIPAL]`` before the policy check. Credentials that are presented
and refused end the request with ``401 UNAUTHORIZED`` (or ``429 TOOMANYREQUESTS``
past the failed-login limit) and an audit record; no credentials means anonymous, and
the policy decides. Any 401 leaving the handler gets the challenge clients follow
(distribution token spec):
``Bearer realm="<base>/token",service="algomint",scope="repository:<name>:<actions>"``."""

from __future__ import annotations

import math
from typing import Awaitable, Callable

from aiohttp import web

from ..api.routes import route_action
from ..api.state import CONFIG, PRINCIPAL
from ..audit.middleware import record_request
from ..oci.errors import Errors, RegistryError
from ..oci.reference import NAME_RE
from ..service.policy import Action
from .authenticator import AuthFailure
from .permissions import TokenPrincipal
from .state import AUTH

__all__ = ["authenticate", "challenge", "refusal", "realm"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SCOPE_ACTIONS = {Action.PULL: "pull", Action.PUSH: "pull,push", Action.DELETE: "delete"}
_UNSAFE = str.maketrans("", "", '"\\\r\n')


def realm(request: web.Request) -> str:
    """``server.public_url`` when configured, else the base URL this request came to."""
    public = request.app[CONFIG].server.public_url
    base = public or f"{request.scheme}://{request.host}"
    return base.rstrip("/").translate(_UNSAFE) + "/token"


def _scope(request: web.Request) -> str | None:
    route = request.match_info.route.name or ""
    if route == "v2.catalog":
        return "registry:catalog:*"
    action = route_action(request) if route.startswith("v2.") else None
    name = request.match_info.get("name")
    if action not in _SCOPE_ACTIONS or not name or not NAME_RE.match(name):
        return None
    if route == "v2.blob.get" and request.method == "HEAD":
        # A blob existence check opens every push; clients that take their scope from the
        # challenge (the oras SDK) would otherwise get a pull-only token and fail the
        # upload. The token service still grants only what the user holds.
        action = Action.PUSH
    return f"repository:{name}:{_SCOPE_ACTIONS[action]}"


def challenge(request: web.Request, error: str | None = None) -> str:
    parts = [f'realm="{realm(request)}"', f'service="{request.app[CONFIG].auth.service}"']
    scope = _scope(request)
    if scope:
        parts.append(f'scope="{scope}"')
    if error:
        parts.append(f'error="{error}"')
    return "Bearer " + ",".join(parts)


def refusal(request: web.Request, failure: AuthFailure) -> RegistryError:
    """The client-facing error for refused credentials (no detail: nothing to learn from it)."""
    if failure.retry_after is not None:
        return RegistryError(Errors.TOOMANYREQUESTS, message=failure.message,
                             headers={"Retry-After": str(math.ceil(failure.retry_after))})
    error = "invalid_token" if failure.scheme == "bearer" else None
    return RegistryError(Errors.UNAUTHORIZED, message=failure.message,
                         headers={"WWW-Authenticate": challenge(request, error)})


def record_failure(request: web.Request, failure: AuthFailure, status: int, method: str) -> None:
    record_request(request, "login", status, outcome="denied", actor=failure.claimed or "anonymous",
                   actor_kind="anonymous", detail={"reason": failure.reason, "method": method})


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(("/v2", "/api/")):
        return await handler(request)
    header = request.headers.get("Authorization")
    try:
        principal, login = await request.app[AUTH].authorization(header, request.remote,
                                                                 registry=request.path.startswith("/v2"))
    except AuthFailure as failure:
        error = refusal(request, failure)
        record_failure(request, failure, error.status, (header or "").partition(" ")[0].lower()[:16])
        raise error from None
    request[PRINCIPAL] = principal
    if login is not None and login.password_checked:
        record_request(request, "login", 200, outcome="success", final=False, detail={"method": "basic"})
    try:
        return await handler(request)
    except RegistryError as exc:
        if "WWW-Authenticate" not in exc.headers:
            if exc.status == 401:
                scoped = isinstance(principal, TokenPrincipal) and principal.access is not None
                exc.headers["WWW-Authenticate"] = challenge(request, "insufficient_scope" if scoped else None)
            elif exc.status == 403 and request.path.startswith("/v2"):
                # RFC 6750 §3.1: a refusal names the scope that would be needed. Clients that
                # re-authenticate on 403 (the oras SDK) then see the refusal stand and stop,
                # instead of retrying a request they can't answer.
                exc.headers["WWW-Authenticate"] = challenge(request, "insufficient_scope")
        raise
