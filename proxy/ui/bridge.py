"""Calling the management API's own route handlers from console pages.

A page does not re-implement what an API route decides: it runs the route's access check
and its handler against the console request (whose principal came from the session), and
reads the JSON the API would have answered. Refusals come back as the same ``ApiError``
or ``RegistryError`` with the same status. ``query`` replaces the request's query string
for the call (filters a page sets itself); path parameters are the console route's own,
which is why console routes use the API's parameter names (``{name}``, ``{id}``).
``body`` (on a console POST) is sent as the JSON body the API route parses."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.streams import StreamReader

from ..api.manage.router import ApiRoute, ApiRouter, check_access

__all__ = ["Bridge", "BRIDGE", "Handler"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_NO_BODY: Any = object()


class Bridge:
    """The mounted management routes, by handler."""

    def __init__(self, routers: list[ApiRouter]) -> None:
        self._routes: dict[Handler, ApiRoute] = {r.handler: r for router in routers for r in router.routes}

    def route(self, handler: Handler) -> ApiRoute:
        try:
            return self._routes[handler]
        except KeyError:
            raise LookupError(f"{handler.__name__} is not a mounted management route") from None

    async def respond(self, request: web.Request, handler: Handler, query: Mapping[str, str] | None = None,
                      body: Any = _NO_BODY) -> web.StreamResponse:
        """The API's own response (e.g. a streamed archive) for this console request."""
        route = self.route(handler)
        if body is not _NO_BODY:
            # A console form post (its form already read): its body becomes the JSON the
            # handler parses. Such routes take no query, and handlers don't look at the method.
            _give_body(request, json.dumps(body).encode())
        elif query is not None:
            request = request.clone(rel_url=request.rel_url.with_query(dict(query)))
        await check_access(request, route.action)
        return await route.handler(request)

    async def call(self, request: web.Request, handler: Handler, query: Mapping[str, str] | None = None,
                   body: Any = _NO_BODY) -> Any:
        """The decoded JSON body the API answers this caller (``body``: the JSON it is sent)."""
        response = await self.respond(request, handler, query, body)
        assert isinstance(response, web.Response)
        return json.loads(response.text) if response.text else None


def _give_body(request: web.Request, data: bytes) -> None:
    """Make ``data`` the body the API handler reads (``request.content``): the console's own
    body was a form, already read. aiohttp has no public way to replace a request's payload."""
    reader = StreamReader(request.protocol, 2**16, loop=asyncio.get_running_loop())
    reader.feed_data(data)
    reader.feed_eof()
    request._payload = reader  # noqa: SLF001 - see above; covered by the console's chain tests


BRIDGE = web.AppKey("ui_bridge", Bridge)
