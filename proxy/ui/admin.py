"""Admin pages: users and robots, grants, the audit log. Each is the API's admins-only
route underneath, so a non-admin gets the API's 403 as a page, however the URL was found."""

from __future__ import annotations

from aiohttp import web

from ..api.manage import audit, grants, users
from .systems import BRIDGE
from .context import page, render

__all__ = ["add_routes"]

_AUDIT_FILTERS = ("actor", "action", "repository", "outcome", "since", "until", "cursor")


@page()
async def user_list(request: web.Request) -> web.StreamResponse:
    query = {"limit": "100", **({"cursor": request.query["cursor"]} if request.query.get("cursor") else {})}
    listing = await request.app[BRIDGE].call(request, users.index, query)
    return render(request, "users.html", {"title": "Users and robots", "users": listing["items"],
                                          "next": listing["next"]})


@page()
async def grant_list(request: web.Request) -> web.StreamResponse:
    query = {k: v for k, v in request.query.items() if k in ("subject", "role", "cursor") and v}
    listing = await request.app[BRIDGE].call(request, grants.index, {**query, "limit": "100"})
    return render(request, "grants.html", {"title": "Grants", "grants": listing["items"], "next": listing["next"],
                                           "query": query})


@page()
async def audit_log(request: web.Request) -> web.StreamResponse:
    query = {k: v for k, v in request.query.items() if k in _AUDIT_FILTERS and v}
    listing = await request.app[BRIDGE].call(request, audit.query, {**query, "limit": "50"})
    return render(request, "audit.html", {"title": "Audit log", "records": listing["items"], "next": listing["next"],
                                          "query": query, "filters": _AUDIT_FILTERS[:-1]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/admin/users", user_list, name="ui.admin_users")
    app.router.add_get("/ui/admin/grants", grant_list, name="ui.admin_grants")
    app.router.add_get("/ui/admin/audit", audit_log, name="ui.admin_audit")
