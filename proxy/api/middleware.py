"""Middlewares, outermost first: request id + access log + metrics, error rendering,
then the policy check every routed request passes before its handler."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Callable

from aiohttp import web

from ..meta import MetadataError
from ..oci.errors import Errors, RegistryError
from .manage.errors import ApiError, from_registry_error
from ..service.policy import ANONYMOUS, Request as PolicyRequest
from .routes import route_action
from .state import IN_FLIGHT, METRICS, POLICY, PRINCIPAL, REQUEST_ID

__all__ = ["add_api_version", "note_headers_sent", "observe", "render_errors", "policy_check", "json_error"]

log = logging.getLogger("algomint.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
# The response whose headers went out for this request (``note_headers_sent``).
_HEADERS_SENT = "algomint.headers_sent"
# Status recorded for a request whose client went away before the answer (nginx's 499).
CLIENT_CLOSED = 499


def client_gone(request: web.Request) -> bool:
    """Whether the client's connection is closed (so no answer can reach it)."""
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, one structured access-log line, request metrics."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    metrics = request.app[METRICS]
    route = request.match_info.route.name or "unmatched"
    started = time.perf_counter()
    status = 500
    metrics.in_flight_requests.inc()
    request.app[IN_FLIGHT].enter()
    try:
        response = await handler(request)
        status = response.status
        response.headers.setdefault("X-Request-Id", request_id)
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionError):
        status = CLIENT_CLOSED  # a disconnect (or a stop), not a server error
        raise
    except Exception:
        if client_gone(request):
            status = CLIENT_CLOSED
        raise
    finally:
        elapsed = time.perf_counter() - started
        metrics.in_flight_requests.dec()
        request.app[IN_FLIGHT].leave()
        metrics.request_done(route, request.method, status, elapsed)
        principal = request.get(PRINCIPAL)
        log.info(
            "client disconnected" if status == CLIENT_CLOSED else "request",
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "remote": request.remote,
                "user": principal.name if principal else None,
            },
        )


def json_error(exc: RegistryError, request_id: str | None = None) -> web.Response:
    headers = {**exc.headers, **_API_VERSION}
    if request_id:
        headers["X-Request-Id"] = request_id
    return web.json_response(exc.body(), status=exc.status, headers=headers)


@web.middleware
async def render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure in the shape of the API it came through: the OCI error body
    on /v2, the management shape on /api; nothing escapes as a bare 500."""
    request_id = request.get(REQUEST_ID)
    management = request.path.startswith("/api/")

    def render(exc: RegistryError) -> web.Response:
        return from_registry_error(exc).response(request_id) if management else json_error(exc, request_id)

    try:
        return await handler(request)
    except Exception as exc:
        started = request.get(_HEADERS_SENT)
        if started is None:
            return _render_failure(request, exc, render)
        # The status line and headers are out: a second response on this connection
        # would be read as the answer to the client's next request. A broken
        # connection is the only honest signal left (the client sees a short body).
        level = logging.INFO if isinstance(exc, ConnectionError) else logging.WARNING
        log.log(level, "response aborted after its headers", extra={
            "request_id": request_id, "path": request.path, "error": f"{type(exc).__name__}: {exc}",
        })
        if request.transport is not None:
            request.transport.abort()
        return started


def _render_failure(
    request: web.Request, exc: Exception, render: Callable[[RegistryError], web.Response]
) -> web.StreamResponse:
    """The error response for a failure before any of the response was sent."""
    request_id = request.get(REQUEST_ID)
    management = request.path.startswith("/api/")
    if isinstance(exc, ApiError):
        return exc.response(request_id)
    if isinstance(exc, RegistryError):
        if exc.error is Errors.UNAVAILABLE and client_gone(request):
            # Most likely the body stopped because the client left: nothing to answer.
            raise ConnectionResetError("client disconnected") from exc
        if exc.error is Errors.UNAVAILABLE:
            request.app[METRICS].backend_errors.labels(exc.code).inc()
            log.warning("backend unavailable", extra={"request_id": request_id, "error": str(exc)})
        return render(exc)
    if isinstance(exc, MetadataError):
        log.error("metadata store failed", extra={"request_id": request_id, "error": str(exc)})
        return render(RegistryError(Errors.UNAVAILABLE, message="metadata store unavailable"))
    if isinstance(exc, (web.HTTPNotFound, web.HTTPMethodNotAllowed)):
        not_found = isinstance(exc, web.HTTPNotFound)
        # A 405 names the methods the resource does take (RFC 9110 §15.5.6).
        allow = {} if not_found else {"Allow": ", ".join(sorted(exc.allowed_methods))}  # type: ignore[attr-defined]
        if management:
            return ApiError(exc.status, "no such route" if not_found else "method not allowed",
                            headers=allow).response(request_id)
        if request.path.startswith("/v2/"):
            error = Errors.NAME_UNKNOWN if not_found else Errors.UNSUPPORTED
            return json_error(RegistryError(error, {"path": request.path[:200], "method": request.method},
                                            headers=allow), request_id)
        raise exc
    if isinstance(exc, (web.HTTPException, ConnectionError)):
        raise exc  # HTTP exceptions render themselves; a client that went away needs no answer
    if client_gone(request):
        # aiohttp ignores a ConnectionError quietly; anything else it logs as a crash.
        raise ConnectionResetError("client disconnected") from exc
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
    return render(RegistryError(Errors.UNKNOWN, message="internal error"))


@web.middleware
async def policy_check(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Ask the policy once, before the handler, for every route that declares an action."""
    action = route_action(request)
    if action is not None:
        principal = request.get(PRINCIPAL, ANONYMOUS)
        request[PRINCIPAL] = principal
        route = request.match_info.route.name or ""
        # Only /v2 paths name a repository; a management path's {name} is a user, chain…
        # (management handlers call ``authorize`` with the repository they act on).
        registry = route.startswith("v2.")
        await request.app[POLICY].check(
            PolicyRequest(
                principal,
                action,
                request.match_info.get("name") if registry else None,
                (request.match_info.get("reference") or request.match_info.get("digest")) if registry else None,
                {"route": route},
            )
        )
    return await handler(request)


async def note_headers_sent(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: from here on a failure must abort, not answer."""
    request[_HEADERS_SENT] = response


async def add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every /v2 response names the API version."""
    if request.path.startswith("/v2"):
        response.headers.update(_API_VERSION)
