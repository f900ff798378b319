"""Declaring management routes once: path, method, access, models, summary.

Every route declares its ``Access`` (there is no default), checked before its handler.
A handler receives the ``web.Request``; it parses its body with ``parse_body(request,
Model)`` (400 for bad JSON, 422 naming each invalid field, 413 past the size cap) and
returns a ``web.Response``. ``authorize`` asks the same policy the registry uses.
Listings page with ``page_params`` and ``next_cursor``: cursors are sealed (``cursors``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Sequence, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ... import safejson
from ...oci.errors import Errors, RegistryError
from ...service.policy import ANONYMOUS, Action, Request as PolicyRequest
from ..state import CONFIG, POLICY, PRINCIPAL
from .cursors import CURSORS
from .errors import ApiError

__all__ = [
    "Access", "ApiRoute", "ApiRouter", "Page", "Query", "LIMIT", "CURSOR", "PAGING", "enum_query", "authorize",
    "mount", "page_params", "parse_body", "validate", "next_cursor", "time_id_cursor", "PREFIX",
]

PREFIX = "/api/v1"
MAX_BODY = 1024 * 1024
MAX_PAGE = 500

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ModelT = TypeVar("ModelT", bound=BaseModel)
ItemT = TypeVar("ItemT")


class Access(enum.Enum):
    """Who may call a route, checked before its handler runs. Every route declares one."""

    PUBLIC = "public"  # no credentials needed (this API's own description)
    SIGNED_IN = "signed-in"  # any user or robot; the handler narrows to what the caller may see
    REPOSITORY = "repository"  # the handler asks the policy about the repository it acts on
    MANAGE = "manage"  # registry-wide manage (admins)


class Page(BaseModel, Generic[ItemT]):
    """One page of a listing; pass ``next`` back as ``cursor`` for the following page."""

    items: list[ItemT]
    next: str | None = None


@dataclass(frozen=True)
class Query:
    """A query parameter with the JSON schema of the values the handler accepts."""

    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


# The paging parameters ``page_params`` reads, as the OpenAPI document states them.
LIMIT = Query(f"page size (1-{MAX_PAGE})", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100})
CURSOR = Query("from the previous page's `next` (opaque)",
               {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "minLength": 1, "maxLength": 1024})
PAGING = {"limit": LIMIT, "cursor": CURSOR}


def enum_query(description: str, values: Sequence[str]) -> Query:
    return Query(description, {"type": "string", "enum": list(values)})


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str  # relative to /api/v1, e.g. "/users/{name}"
    handler: Handler
    name: str
    summary: str
    action: Access
    body: type[BaseModel] | None = None
    response: Any = None  # a pydantic model (or generic alias) describing the 2xx body
    status: int = 200
    # name -> a Query, or a description: a string, or PAGING's schema for ``limit`` and ``cursor``.
    query: dict[str, str | Query] = field(default_factory=dict)
    tag: str = ""

    @property
    def public(self) -> bool:
        return self.action is Access.PUBLIC
    # A path parameter's schema when it is narrower than the route's regex (name -> Query).
    path_params: dict[str, Query] = field(default_factory=dict)


class ApiRouter:
    """The routes of one resource module."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.routes: list[ApiRoute] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        action: Access,
        body: type[BaseModel] | None = None,
        response: Any = None,
        status: int = 200,
        query: dict[str, str | Query] | None = None,
        path_params: dict[str, Query] | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(
                ApiRoute(method, path, handler, f"api.{self.tag}.{handler.__name__}", summary, action, body,
                         response, status, query or {}, self.tag, path_params or {})
            )
            return handler

        return register


def mount(app: web.Application, routers: Sequence[ApiRouter]) -> None:
    """Register every router's routes on ``app`` under ``/api/v1``, each behind its access check."""
    for router in routers:
        for route in router.routes:
            handler = _gated(route)
            if route.method == "GET":
                app.router.add_get(PREFIX + route.path, handler, name=route.name)
            else:
                app.router.add_route(route.method, PREFIX + route.path, handler, name=route.name)


def _gated(route: ApiRoute) -> Handler:
    if not isinstance(route.action, Access):
        raise TypeError(f"{route.name}: a management route must declare its Access")

    async def handler(request: web.Request) -> web.StreamResponse:
        await check_access(request, route.action)
        return await route.handler(request)

    handler.__name__ = route.handler.__name__
    return handler


async def check_access(request: web.Request, access: Access) -> None:
    """The route-level check: registry tokens never pass (they are for ``/v2`` only; the
    authenticator already refuses them here), anonymous callers need credentials for
    anything but public routes when authentication is on, admins-only routes ask the policy."""
    principal = request.get(PRINCIPAL, ANONYMOUS)
    if getattr(principal, "access", None) is not None:
        raise ApiError(403, "registry tokens are valid only for /v2; use a password or an API token")
    if access is Access.PUBLIC:
        return
    if access is Access.MANAGE:
        await authorize(request, Action.MANAGE, None)
    elif access is Access.SIGNED_IN and principal.is_anonymous and request.app[CONFIG].auth.enabled:
        raise RegistryError(Errors.UNAUTHORIZED, message="this resource needs credentials")


async def parse_body(request: web.Request, model: type[ModelT]) -> ModelT:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"request body exceeds {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body exceeds {MAX_BODY} bytes")
    try:
        data = safejson.loads(raw or b"null")
    except safejson.JsonError as exc:
        raise ApiError(400, "request body is not valid JSON", {"reason": str(exc)}) from None
    return validate(model, data)


def validate(model: type[ModelT], data: Any) -> ModelT:
    """``model`` from request data (a body, or a body combined with the path): 422 naming
    each invalid field, so no validation error escapes as a 500."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]} for err in exc.errors()
        ]
        raise ApiError(422, "request failed validation", {"fields": fields}) from None


def time_id_cursor(value: object) -> bool:
    """A ``[timestamp, id]`` cursor, as the newest-first listings (full builds, GC runs)
    resume after; anything else would reach the store's comparison."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (int, float))
            and not isinstance(value[0], bool) and isinstance(value[1], str))


def next_cursor(request: web.Request, value: Any) -> str:
    """An opaque cursor for this listing, resuming after ``value``."""
    return request.app[CURSORS].encode(request.match_info.route.name or "", value)


def page_params(
    request: web.Request, default: int = 100, cursor: type | Callable[[Any], bool] | None = None
) -> tuple[int, Any]:
    """``limit`` (1..500) and the decoded cursor (None on the first page). ``cursor`` is
    the type a listing's cursor has (or a check of it): anything else is refused."""
    raw = request.query.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_PAGE}", {"limit": raw[:20]})
    text = request.query.get("cursor")
    value = None
    if text:
        if len(text) > CURSOR.schema["maxLength"]:
            raise ApiError(400, "invalid cursor")
        try:
            value = request.app[CURSORS].decode(request.match_info.route.name or "", text)
        except ValueError:
            raise ApiError(400, "invalid cursor") from None
    if value is not None and cursor is not None:
        valid = isinstance(value, cursor) if isinstance(cursor, type) else cursor(value)
        if not valid:
            raise ApiError(400, "invalid cursor")
    return int(raw), value


async def authorize(request: web.Request, action: Action, repository: str | None, reference: str | None = None) -> None:
    """Ask the policy about a repository named in a body or query, not in the path."""
    await request.app[POLICY].check(PolicyRequest(request.get(PRINCIPAL, ANONYMOUS), action, repository, reference))
