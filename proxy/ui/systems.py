"""Business systems: the chains the caller may read, each with its business packages and
recent assembly jobs; creating, editing, re-assembling and deleting them. Everything goes through
the API's own chain and assembly handlers (``Bridge``): the same validation, the same
rights checks, and the API's field errors shown beside the form's fields."""

from __future__ import annotations

import json
from urllib.parse import quote

from aiohttp import web

from ..api.manage import assemblies, chains
from ..api.manage.errors import ApiError
from ..api.state import CONFIG
from .bridge import BRIDGE
from .repositories import readable_repositories
from .context import SESSION, page, render
from .forms import field_errors

__all__ = ["add_routes"]


@page()
async def systems(request: web.Request) -> web.StreamResponse:
    listing = await request.app[BRIDGE].call(request, chains.list_chains)
    return render(request, "systems.html", {"title": "Business systems", "chains": listing["items"],
                                            "file": listing.get("file")})


@page()
async def reload_file(request: web.Request) -> web.StreamResponse:
    """Re-read the chains file (admins), as ``POST /api/v1/chains/reload`` or SIGHUP does."""
    listing = await request.app[BRIDGE].call(request, chains.reload_chains, body=None)
    status = listing.get("file") or {}
    request[SESSION].flash.append(f"Chains file {status.get('file') or ''} re-read: {status.get('chains', 0)} chain(s).")
    raise web.HTTPSeeOther("/ui/systems")


@page()
async def system(request: web.Request) -> web.StreamResponse:
    bridge = request.app[BRIDGE]
    chain = await bridge.call(request, chains.get_chain)
    prefix = f"{request.app[CONFIG].assembly.business_prefix}{chain['name']}/"
    packages, following = await readable_repositories(request, prefix)
    jobs = await bridge.call(request, assemblies.list_assemblies, {"chain": chain["name"], "limit": "20"})
    return render(request, "system.html", {"title": f"Business system {chain['name']}", "chain": chain,
                                           "packages": packages, "next": following, "jobs": jobs["items"]})


_FORM_FIELDS = ("name", "match", "plugins", "params", "platforms")


def _lines(value: object) -> list[str]:
    return [line.strip() for line in str(value or "").splitlines() if line.strip()]


def _chain_form(request: web.Request, values: dict[str, str], errors: dict[str, str], creating: bool,
                status: int = 200) -> web.Response:
    title = "New business system" if creating else f"Edit business system {values['name']}"
    return render(request, "chain_form.html", {"title": title, "values": values, "errors": errors,
                                               "creating": creating}, status=status)


async def _save(request: web.Request, creating: bool) -> web.StreamResponse:
    form = await request.post()
    name = request.match_info.get("name") or str(form.get("name", "")).strip()
    values = {"name": name, "match": str(form.get("match", "")), "plugins": str(form.get("plugins", "")),
              "params": str(form.get("params", "") or "{}"), "platforms": str(form.get("platforms", ""))}
    try:
        params = json.loads(values["params"])
    except ValueError as exc:
        return _chain_form(request, values, {"params": f"not valid JSON: {exc}"}, creating, 422)
    body = {"match": _lines(values["match"]), "plugins": _lines(values["plugins"]), "params": params,
            "platforms": _lines(values["platforms"])}
    try:
        if creating:
            await request.app[BRIDGE].call(request, chains.create_chain, body={"name": name, **body})
        else:
            await request.app[BRIDGE].call(request, chains.update_chain, body=body)
    except ApiError as exc:
        if exc.status in (401, 404) or (exc.status == 403 and not isinstance(exc.detail, dict)):
            raise
        return _chain_form(request, values, field_errors(exc, _FORM_FIELDS), creating, exc.status)
    request[SESSION].flash.append(f"Business system {name} saved.")
    raise web.HTTPSeeOther(f"/ui/systems/{quote(name, safe='')}")


@page()
async def new_system(request: web.Request) -> web.StreamResponse:
    if request.method == "POST":
        return await _save(request, creating=True)
    return _chain_form(request, {"name": "", "match": "generic/*", "plugins": "", "params": "{}", "platforms": ""}, {},
                       True)


@page()
async def edit_system(request: web.Request) -> web.StreamResponse:
    if request.method == "POST":
        return await _save(request, creating=False)
    chain = await request.app[BRIDGE].call(request, chains.get_chain)
    values = {"name": chain["name"], "match": "\n".join(chain["match"]), "plugins": "\n".join(chain["plugins"]),
              "params": json.dumps(chain["params"], indent=2), "platforms": "\n".join(chain.get("platforms") or [])}
    return _chain_form(request, values, {}, False)


@page()
async def reassemble(request: web.Request) -> web.StreamResponse:
    package = (await request.post()).get("package")
    body = {"packages": [package[:600]]} if isinstance(package, str) and package else {}
    result = await request.app[BRIDGE].call(request, chains.assemble_chain, body=body)
    name = request.match_info["name"]
    what = package if body else "every matching package"
    request[SESSION].flash.append(f"Re-assembling {what} for {name}: {len(result['jobs'])} job(s) queued.")
    raise web.HTTPSeeOther(f"/ui/assemblies?chain={quote(name, safe='')}")


@page()
async def delete_system(request: web.Request) -> web.StreamResponse:
    await request.app[BRIDGE].call(request, chains.delete_chain, body=None)
    request[SESSION].flash.append(f"Business system {request.match_info['name']} deleted; "
                                  "its business packages and assembly jobs stay.")
    raise web.HTTPSeeOther("/ui/systems")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/systems", systems, name="ui.systems")
    app.router.add_post("/ui/systems/reload", reload_file, name="ui.systems_reload")
    app.router.add_get("/ui/new/system", new_system, name="ui.system_new_form")
    app.router.add_post("/ui/new/system", new_system, name="ui.system_new")
    app.router.add_get("/ui/systems/{name}", system, name="ui.system")
    app.router.add_get("/ui/systems/{name}/edit", edit_system, name="ui.system_edit_form")
    app.router.add_post("/ui/systems/{name}/edit", edit_system, name="ui.system_edit")
    app.router.add_post("/ui/systems/{name}/assemble", reassemble, name="ui.system_assemble")
    app.router.add_post("/ui/systems/{name}/delete", delete_system, name="ui.system_delete")
