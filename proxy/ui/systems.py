"""Business systems: the chains the caller may read, each with its business packages and
recent assembly jobs. Chains and jobs come from the API's own handlers (``Bridge``)."""

from __future__ import annotations

from aiohttp import web

from ..api.manage import assemblies, chains
from ..api.state import CONFIG
from .bridge import Bridge
from .repositories import readable_repositories
from .context import page, render

__all__ = ["add_routes"]

BRIDGE = web.AppKey("ui_bridge", Bridge)


@page()
async def systems(request: web.Request) -> web.StreamResponse:
    listing = await request.app[BRIDGE].call(request, chains.list_chains)
    return render(request, "systems.html", {"title": "Business systems", "chains": listing["items"]})


@page()
async def system(request: web.Request) -> web.StreamResponse:
    bridge = request.app[BRIDGE]
    chain = await bridge.call(request, chains.get_chain)
    prefix = f"{request.app[CONFIG].assembly.business_prefix}{chain['name']}/"
    packages, following = await readable_repositories(request, prefix, request.query.get("after"))
    jobs = await bridge.call(request, assemblies.list_assemblies, {"chain": chain["name"], "limit": "20"})
    return render(request, "system.html", {"title": f"Business system {chain['name']}", "chain": chain,
                                           "packages": packages, "next": following, "jobs": jobs["items"]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/systems", systems, name="ui.systems")
    app.router.add_get("/ui/systems/{name}", system, name="ui.system")
