"""Admin → Storage: garbage collection of the embedded storage (``/api/v1/gc`` underneath).

Runs newest first, starting a run or a dry run, and a run's page whose status block asks for
itself every two seconds while the run goes on (htmx, as a full build's does). With the
registry backend the backing registry collects its own content: the page says so, in the
words of the API's 409, instead of offering the form."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..api.manage import gc
from ..api.manage.errors import ApiError
from ..api.manage.gc import GC_RUNS, REGISTRY_GC
from .bridge import BRIDGE
from .context import SESSION, page, render

__all__ = ["add_routes"]


def _partial(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


async def _storage_page(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    # After a form post the request cannot take another query: the first page, as the API pages it.
    query = None if request.method == "POST" else {
        "limit": "20", **({"cursor": request.query["cursor"]} if request.query.get("cursor") else {})}
    listing = await request.app[BRIDGE].call(request, gc.list_gc, query)
    return render(request, "storage.html", {
        "title": "Storage", "runs": listing["items"], "next": listing["next"], "error": error,
        "registry": request.app[GC_RUNS].collector is None, "registry_gc": REGISTRY_GC,
        "running": next((r for r in listing["items"] if r["status"] == "running"), None)}, status=status)


@page()
async def storage(request: web.Request) -> web.StreamResponse:
    return await _storage_page(request)


@page()
async def start(request: web.Request) -> web.StreamResponse:
    # A form without a clear "false" is a dry run: nothing is removed by accident.
    dry_run = (await request.post()).get("dry_run") != "false"
    try:
        run = await request.app[BRIDGE].call(request, gc.start_gc, body={"dry_run": dry_run})
    except ApiError as exc:
        if exc.status != 409:
            raise
        return await _storage_page(request, exc.message, 409)  # one is running, or the registry backend
    request[SESSION].flash.append(f"{'Dry run' if dry_run else 'Garbage collection'} {run['id']} started.")
    raise web.HTTPSeeOther(f"/ui/admin/storage/gc/{run['id']}")


@page()
async def run(request: web.Request) -> web.StreamResponse:
    record: dict[str, Any] = await request.app[BRIDGE].call(request, gc.get_gc)
    template = "gc_status.html" if _partial(request) else "gc_run.html"
    return render(request, template, {"title": f"Garbage collection {record['id']}", "run": record})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/admin/storage", storage, name="ui.admin_storage")
    app.router.add_post("/ui/admin/storage/gc", start, name="ui.admin_gc_start")
    app.router.add_get("/ui/admin/storage/gc/{id}", run, name="ui.admin_gc_run")
