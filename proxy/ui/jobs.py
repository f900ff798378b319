"""Assembly jobs and full builds with live progress, and archive downloads.

Progress updates without a reload: while a job or build is queued or running, its status
block asks for itself again every two seconds (htmx ``hx-trigger="every 2s"``) and stops
once it is done. The list of full builds holds those of packages the caller may pull, as
``GET /api/v1/full-builds/{id}`` decides (the API's listing itself is for admins). Starting
(or retrying) a full build goes to the same service call as ``POST /api/v1/full-builds``,
which checks the caller's rights on every source and target."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..api.manage import archive, assemblies, fullbuilds
from ..api.manage.access import caller, may, pull_prefixes
from ..api.manage.errors import ApiError
from ..api.manage.fullbuilds import FULL_BUILDS
from ..api.manage.router import next_cursor, page_params, time_id_cursor
from ..api.manage.times import iso_times
from ..oci.errors import Errors, RegistryError
from ..service.policy import Action
from .bridge import BRIDGE, Handler
from .context import SESSION, page, render

__all__ = ["add_routes"]

_STATUSES = ("queued", "running", "succeeded", "failed", "skipped")
_BATCH, _MAX_BATCHES = 200, 10  # builds looked at per page: at most 2,000


def _partial(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


@page()
async def assembly_list(request: web.Request) -> web.StreamResponse:
    query = {k: v for k, v in request.query.items() if k in ("status", "chain", "cursor") and v}
    listing = await request.app[BRIDGE].call(request, assemblies.list_assemblies, {**query, "limit": "50"})
    return render(request, "assemblies.html", {"title": "Assemblies", "jobs": listing["items"],
                                               "next": listing["next"], "query": query, "statuses": _STATUSES})


async def _one(request: web.Request, handler: Handler, missing: str) -> dict[str, Any]:
    """The API's answer for one job or build; one the caller may not read answers 404 as a
    missing one does (job numbers are easy to guess)."""
    try:
        return await request.app[BRIDGE].call(request, handler)
    except RegistryError as exc:
        if exc.error is Errors.DENIED:
            raise ApiError(404, missing) from None
        raise


@page()
async def assembly(request: web.Request) -> web.StreamResponse:
    job = await _one(request, assemblies.get_assembly, f"no assembly job {request.match_info['id'][:30]}")
    template = "assembly_status.html" if _partial(request) else "assembly.html"
    return render(request, template, {"title": f"Assembly {job['id']}", "job": job})


@page()
async def build_list(request: web.Request) -> web.StreamResponse:
    """Full builds of packages the caller may pull (the rule of ``GET /api/v1/full-builds/{id}``),
    newest first. The API's listing is for admins; here each user sees their own share of it."""
    limit, cursor = page_params(request, default=50, cursor=time_id_cursor)
    query = {k: v for k, v in request.query.items() if k in ("state", "package") and v}
    if query.get("state") not in (None, *_STATUSES):
        raise ApiError(400, f"state must be one of {', '.join(_STATUSES)}")
    builds, following = await _readable_builds(request, limit, cursor, query)
    return render(request, "builds.html", {"title": "Full builds", "builds": builds,
                                           "next": next_cursor(request, following) if following else None,
                                           "query": query, "statuses": _STATUSES})


async def _readable_builds(request: web.Request, limit: int, cursor: list[Any] | None,
                           query: dict[str, str]) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """A page of the builds the caller may read, and where the next one starts (None: no more).

    Filtered before paging, in bounded batches: a long run of builds the caller may not read
    ends the scan early, with the next page starting after the last build looked at."""
    service, readable = request.app[FULL_BUILDS], _Readable(request)
    prefixes = await pull_prefixes(request)  # builds no grant can cover are skipped in SQL
    items: list[dict[str, Any]] = []
    before = cursor
    for _ in range(_MAX_BATCHES):
        batch = await service.list(_BATCH, before, package=query.get("package"), state=query.get("state"),
                                   prefixes=prefixes)
        for record in batch:
            visible = await readable(record.repository)
            if visible and len(items) == limit:
                return items, before
            before = [record.created_at, record.id]
            if visible:
                items.append(iso_times(record.to_json(layers=False), "created_at", "started_at", "finished_at"))
        if len(batch) < _BATCH:
            return items, None
    return items, before


class _Readable:
    """``may(PULL, repository)`` for one request, asked once per repository."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._known: dict[str, bool] = {}

    async def __call__(self, repository: str) -> bool:
        if repository not in self._known:
            self._known[repository] = await may(self._request, Action.PULL, repository)
        return self._known[repository]


@page()
async def build(request: web.Request) -> web.StreamResponse:
    record = await _one(request, fullbuilds.get_full_build, f"no full build {request.match_info['id'][:64]}")
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
