"""Assembly jobs and full builds with live progress, and archive downloads.

Progress updates without a reload: while a job or build is queued or running, its status
block asks for itself again every two seconds (htmx ``hx-trigger="every 2s"``) and stops
once it is done. Starting (or retrying) a full build goes to the same service call as
``POST /api/v1/full-builds``, which checks the caller's rights on every source and target."""

from __future__ import annotations

from aiohttp import web

from ..api.manage import archive, assemblies, fullbuilds
from ..api.manage.access import caller
from ..api.manage.errors import ApiError
from ..api.manage.fullbuilds import FULL_BUILDS
from .bridge import BRIDGE
from .context import SESSION, page, render

__all__ = ["add_routes"]

_STATUSES = ("queued", "running", "succeeded", "failed", "skipped")


def _partial(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


@page()
async def assembly_list(request: web.Request) -> web.StreamResponse:
    query = {k: v for k, v in request.query.items() if k in ("status", "chain", "cursor") and v}
    listing = await request.app[BRIDGE].call(request, assemblies.list_assemblies, {**query, "limit": "50"})
    return render(request, "assemblies.html", {"title": "Assemblies", "jobs": listing["items"],
                                               "next": listing["next"], "query": query, "statuses": _STATUSES})


@page()
async def assembly(request: web.Request) -> web.StreamResponse:
    job = await request.app[BRIDGE].call(request, assemblies.get_assembly)
    template = "assembly_status.html" if _partial(request) else "assembly.html"
    return render(request, template, {"title": f"Assembly {job['id']}", "job": job})


@page()
async def build_list(request: web.Request) -> web.StreamResponse:
    query = {k: v for k, v in request.query.items() if k in ("state", "package", "cursor") and v}
    listing = await request.app[BRIDGE].call(request, fullbuilds.list_full_builds, {**query, "limit": "50"})
    return render(request, "builds.html", {"title": "Full builds", "builds": listing["items"],
                                           "next": listing["next"], "query": query, "statuses": _STATUSES})


@page()
async def build(request: web.Request) -> web.StreamResponse:
    record = await request.app[BRIDGE].call(request, fullbuilds.get_full_build)
    template = "build_status.html" if _partial(request) else "build.html"
    return render(request, template, {"title": f"Full build {record['id']}", "build": record})


@page()
async def start_build(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    package, license_kind = str(form.get("package", ""))[:600], str(form.get("license", ""))[:64]
    if not package or not license_kind:
        raise ApiError(422, "choose a package and a license kind")
    try:
        record, _ = await request.app[FULL_BUILDS].submit(package, license_kind, caller(request))
    except fullbuilds.BuildInputError as exc:
        raise ApiError(exc.status, exc.message) from None
    request[SESSION].flash.append(f"Full build of {package} for {license_kind}: {record.state}")
    raise web.HTTPSeeOther(f"/ui/builds/{record.id}")


@page()
async def download(request: web.Request) -> web.StreamResponse:
    """The API's archive stream (``Range``, ``ETag``, ``?compress=zstd``) under the console session."""
    return await request.app[BRIDGE].respond(request, archive.get_archive)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/assemblies", assembly_list, name="ui.assemblies")
    app.router.add_get("/ui/assemblies/{id}", assembly, name="ui.assembly")
    app.router.add_get("/ui/builds", build_list, name="ui.builds")
    app.router.add_post("/ui/builds", start_build, name="ui.build_start")
    app.router.add_get("/ui/builds/{id}", build, name="ui.build")
    app.router.add_get("/ui/archive/{target:.+}", download, name="ui.archive")
