"""Route names, paths and the action each one needs: the one place the API surface is listed.

Repository names contain slashes, so ``{name}`` is greedy (``.+``); the fixed suffix
after it (``/manifests/``, ``/blobs/``…) decides the route (distribution-spec §Endpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web

from ..service.policy import Action

__all__ = ["Route", "V2_ROUTES", "route_action", "add_routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTE_ACTIONS = web.AppKey("route_actions", dict)


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str
    action: Action | None  # None: no repository access (the policy is not asked)


V2_ROUTES: tuple[Route, ...] = (
    Route("v2.base", "GET", "/v2/", Action.PULL),
    Route("v2.catalog", "GET", "/v2/_catalog", Action.PULL),
    Route("v2.tags", "GET", "/v2/{name:.+}/tags/list", Action.PULL),
    Route("v2.manifest.get", "GET", "/v2/{name:.+}/manifests/{reference}", Action.PULL),
    Route("v2.manifest.put", "PUT", "/v2/{name:.+}/manifests/{reference}", Action.PUSH),
    Route("v2.manifest.delete", "DELETE", "/v2/{name:.+}/manifests/{reference}", Action.DELETE),
    Route("v2.upload.start", "POST", "/v2/{name:.+}/blobs/uploads/", Action.PUSH),
    Route("v2.upload.status", "GET", "/v2/{name:.+}/blobs/uploads/{upload_id}", Action.PUSH),
    Route("v2.upload.patch", "PATCH", "/v2/{name:.+}/blobs/uploads/{upload_id}", Action.PUSH),
    Route("v2.upload.finish", "PUT", "/v2/{name:.+}/blobs/uploads/{upload_id}", Action.PUSH),
    Route("v2.upload.cancel", "DELETE", "/v2/{name:.+}/blobs/uploads/{upload_id}", Action.PUSH),
    Route("v2.blob.get", "GET", "/v2/{name:.+}/blobs/{digest}", Action.PULL),
    Route("v2.blob.delete", "DELETE", "/v2/{name:.+}/blobs/{digest}", Action.DELETE),
    Route("v2.referrers", "GET", "/v2/{name:.+}/referrers/{digest}", Action.PULL),
)

def route_action(request: web.Request) -> Action | None:
    """The action the matched route needs (``None``: the policy is not asked)."""
    return request.app[ROUTE_ACTIONS].get(request.match_info.route.name or "")


def add_routes(app: web.Application, routes: tuple[Route, ...], handlers: dict[str, Handler]) -> None:
    """Register ``routes`` with the handler named for each (a GET also answers HEAD)."""
    actions = app.setdefault(ROUTE_ACTIONS, {})
    for route in routes:
        handler = handlers[route.name]
        if route.method == "GET":
            app.router.add_get(route.path, handler, name=route.name)
        else:
            app.router.add_route(route.method, route.path, handler, name=route.name)
        actions[route.name] = route.action
