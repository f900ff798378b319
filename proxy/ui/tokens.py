"""API tokens: your own (admins: everyone's), create one (its secret shown once), revoke.
All through the API's token routes, so ownership and admin rules are the API's."""

from __future__ import annotations

from aiohttp import web

from ..api.manage import tokens
from ..api.manage.errors import ApiError
from .context import SESSION, page, render
from .bridge import BRIDGE

__all__ = ["add_routes"]


@page()
async def token_list(request: web.Request) -> web.StreamResponse:
    query = {k: v for k, v in request.query.items() if k in ("owner", "cursor") and v}
    listing = await request.app[BRIDGE].call(request, tokens.index, {**query, "limit": "100"})
    return render(request, "tokens.html", {"title": "API tokens", "tokens": listing["items"], "next": listing["next"],
                                           "query": query})


@page()
async def create_token(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    body: dict[str, object] = {"name": str(form.get("name", ""))[:100]}
    if form.get("owner"):
        body["owner"] = str(form["owner"])[:256]
    days = str(form.get("days", "")).strip()
    if days:
        if not (days.isascii() and days.isdigit()) or not 0 < int(days) <= 36_500:
            raise ApiError(422, "expires in: a whole number of days")
        body["expires_in"] = int(days) * 86_400  # the API caps it at the configured maximum
    created = await request.app[BRIDGE].call(request, tokens.create, body=body)
    # The secret is shown on this response only, never stored in the session or a URL.
    return render(request, "token_created.html", {"title": "New API token", "created": created}, status=201)


@page()
async def revoke_token(request: web.Request) -> web.StreamResponse:
    await request.app[BRIDGE].call(request, tokens.revoke)
    request[SESSION].flash.append(f"Token {request.match_info['id']} revoked.")
    raise web.HTTPSeeOther("/ui/tokens")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/tokens", token_list, name="ui.tokens")
    app.router.add_post("/ui/tokens", create_token, name="ui.token_create")
    app.router.add_post("/ui/tokens/{id}/revoke", revoke_token, name="ui.token_revoke")
