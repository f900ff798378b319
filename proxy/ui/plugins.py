"""Plugins: the plugin repositories the caller may read, each version's kind, options and
files, and publishing a plugin (files uploaded from the browser) through the API's push."""

from __future__ import annotations

import base64
import json

from aiohttp import web

from ..api.manage import plugins
from ..api.manage.errors import ApiError
from .bridge import BRIDGE
from .context import SESSION, page, render
from .forms import field_errors

__all__ = ["add_routes"]

_KINDS = ("file", "service", "job", "function")


@page()
async def plugin_list(request: web.Request) -> web.StreamResponse:
    query = {"limit": "100", **({"cursor": request.query["cursor"]} if request.query.get("cursor") else {})}
    listing = await request.app[BRIDGE].call(request, plugins.list_plugins, query)
    return render(request, "plugins.html", {"title": "Plugins", "plugins": listing["items"], "next": listing["next"],
                                            "kinds": _KINDS, "errors": {}, "values": {}})


@page()
async def plugin(request: web.Request) -> web.StreamResponse:
    detail = await request.app[BRIDGE].call(request, plugins.get_plugin)
    return render(request, "plugin.html", {"title": f"Plugin {detail['name']}", "plugin": detail})


@page()
async def push_plugin(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    values = {k: str(form.get(k, "")) for k in ("name", "version", "kind", "options")}
    errors: dict[str, str] = {}
    try:
        options = json.loads(values["options"] or "{}")
    except ValueError as exc:
        errors["options"] = f"not valid JSON: {exc}"
        options = {}
    files = []
    for field in form.getall("files", []):
        if isinstance(field, web.FileField) and field.filename:
            files.append({"path": field.filename, "data": base64.b64encode(field.file.read()).decode()})
    if not errors:
        body = {"name": values["name"], "version": values["version"], "kind": values["kind"], "options": options,
                "files": files}
        try:
            pushed = await request.app[BRIDGE].call(request, plugins.push_plugin, body=body)
        except ApiError as exc:
            if exc.status in (401,):
                raise
            errors = field_errors(exc, [*values, "files"])
        else:
            request[SESSION].flash.append(f"Pushed {pushed['repository']}:{pushed['tag']} ({pushed['digest']}).")
            raise web.HTTPSeeOther(f"/ui/plugins/{values['name']}")
    listing = await request.app[BRIDGE].call(request, plugins.list_plugins)
    return render(request, "plugins.html", {"title": "Plugins", "plugins": listing["items"], "next": listing["next"],
                                            "kinds": _KINDS, "errors": errors, "values": values}, status=422)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/plugins", plugin_list, name="ui.plugins")
    app.router.add_post("/ui/plugins", push_plugin, name="ui.plugin_push")
    app.router.add_get("/ui/plugins/{name:.+}", plugin, name="ui.plugin")
