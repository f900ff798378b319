"""``/api/v1/gc``: start a garbage collection of the embedded storage and follow it (admin).

With the registry backend the backing registry owns its content; its own collector
(distribution: ``registry garbage-collect``) applies, and ``POST`` answers 409 saying so."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ...service.gcruns import GcBusy, GcRuns
from ...service.policy import ANONYMOUS
from ..state import PRINCIPAL
from .errors import ApiError
from .times import iso_times
from .router import PAGING, Access, ApiRouter, Page, next_cursor, page_params, parse_body, time_id_cursor

__all__ = ["router", "GC_RUNS", "REGISTRY_GC"]

GC_RUNS = web.AppKey("gc_runs", GcRuns)
router = ApiRouter("gc")

REGISTRY_GC = (
    "garbage collection of the registry backend is the backing registry's own: run its collector "
    "(distribution: `registry garbage-collect --delete-untagged <config.yml>`, with the registry read-only)"
)


class GcRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dry_run: bool = False


class GcCountsView(BaseModel):
    repositories: int
    manifests_scanned: int
    blobs_scanned: int
    layer_links_removed: int
    manifests_removed: int
    blobs_removed: int
    bytes_reclaimed: int


class GcRunView(BaseModel):
    id: str
    status: Literal["running", "succeeded", "failed"]
    dry_run: bool
    trigger: Literal["api", "schedule"]
    actor: str
    actor_kind: str
    started_at: str = Field(description="ISO 8601, UTC")
    finished_at: str | None = None
    phase: Literal["mark", "unlink", "reclaim", "done"]
    counts: GcCountsView
    error: str | None = None


def _out(run: dict[str, Any]) -> dict[str, Any]:
    return iso_times(run, "started_at", "finished_at")


@router.route("POST", "/gc", summary="Start a garbage collection of the embedded storage (dry_run: report only)",
              body=GcRequest, response=GcRunView, status=202, action=Access.MANAGE)
async def start_gc(request: web.Request) -> web.Response:
    body = await parse_body(request, GcRequest)
    runs = request.app[GC_RUNS]
    if runs.collector is None:
        raise ApiError(409, REGISTRY_GC, {"backend": "registry"})
    try:
        principal = request.get(PRINCIPAL, ANONYMOUS)
        run = await runs.begin(dry_run=body.dry_run, trigger="api", actor=principal.name, actor_kind=principal.kind)
    except GcBusy as exc:
        raise ApiError(409, str(exc), {"run": _out(exc.run.to_json())}) from None
    return web.json_response(_out(run.to_json()), status=202, headers={"Location": f"/api/v1/gc/{run.id}"})


@router.route("GET", "/gc/{id}", summary="A garbage collection run: status, phase, counts, bytes reclaimed",
              response=GcRunView, action=Access.MANAGE)
async def get_gc(request: web.Request) -> web.Response:
    run_id = request.match_info["id"]
    run = await request.app[GC_RUNS].get(run_id) if len(run_id) <= 64 else None
    if run is None:
        raise ApiError(404, f"no garbage collection run {run_id[:64]}")
    return web.json_response(_out(run.to_json()))


@router.route("GET", "/gc", summary="Garbage collection runs, newest first", response=Page[GcRunView],
              query=dict(PAGING), action=Access.MANAGE)
async def list_gc(request: web.Request) -> web.Response:
    limit, cursor = page_params(request, default=20, cursor=time_id_cursor)
    runs = await request.app[GC_RUNS].list(limit + 1, tuple(cursor) if cursor else None)
    more = len(runs) > limit
    runs = runs[:limit]
    following = next_cursor(request, [runs[-1].started_at, runs[-1].id]) if more and runs else None
    return web.json_response({"items": [_out(r.to_json()) for r in runs], "next": following})
