"""``/api/v1/assemblies``: assembly jobs with status, timings, plugin digests, errors and logs.

A job is visible to whoever may pull its business repository; its source, plugins, log and
error detail only to whoever may also pull the source (and each plugin)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from packer.assembly import STATUSES

from ...service.policy import Action
from ..state import PACKER
from .access import may, pull_prefixes
from .errors import ApiError
from .times import iso_times
from .router import Access, ApiRouter, Page, authorize, enum_query, next_cursor, page_params

__all__ = ["router"]

router = ApiRouter("assemblies")
_TIMES = ("created", "started", "finished")

_BATCH = 200
_MAX_BATCHES = 10  # at most 2,000 jobs looked at per page: a page stays well under 200 ms


class PackageRef(BaseModel):
    repository: str
    tag: str
    digest: str | None


class PluginRun(BaseModel):
    ref: str
    repository: str
    digest: str
    name: str | None = None
    version: str | None = None
    kind: str | None = None
    ms: float | None = None


class AssemblyOut(BaseModel):
    id: int
    chain: str
    status: Literal["queued", "running", "succeeded", "failed", "skipped"]
    trigger: Literal["push", "api"]
    runs: int
    source: PackageRef | None = Field(description="null when the caller may not pull the source")
    target: PackageRef
    tag_written: bool | None
    plugins: list[PluginRun]
    error: dict[str, Any] | None
    created: str = Field(description="ISO 8601, UTC")
    started: str | None
    finished: str | None
    duration_ms: float | None
    logs: str | None = None


@router.route("GET", "/assemblies", summary="List assembly jobs, newest first", response=Page[AssemblyOut],
              query={"status": enum_query("only jobs in this state", STATUSES), "chain": "chain name",
                     "repository": "source or target repository", "limit": "page size (1-500)",
                     "cursor": "from the previous page's next"}, action=Access.SIGNED_IN)
async def list_assemblies(request: web.Request) -> web.Response:
    limit, cursor = page_params(request, cursor=int)
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}", {"status": status[:50]})
    repository = request.query.get("repository")
    if repository is not None:
        await authorize(request, Action.PULL, repository)  # no probing for jobs of unreadable sources
    assembly = request.app[PACKER].assembly
    items: list[dict[str, Any]] = []
    before, more = cursor, False
    prefixes = await pull_prefixes(request)  # jobs of repositories no grant can cover are skipped in SQL
    # Filter before paging, in bounded batches: ``next`` only when another visible job
    # exists, or when a long run of invisible ones ends the scan (then after the last scanned).
    for _ in range(_MAX_BATCHES):
        batch = await assembly.list(_BATCH, before, status, request.query.get("chain"), repository, prefixes)
        for job in batch:
            visible = await may(request, Action.PULL, job["target"]["repository"])
            if visible and len(items) == limit:
                more = True
                break
            before = job["id"]
            if visible:
                items.append(await _redacted(request, job))
        if more or len(batch) < _BATCH:
            break
    else:
        more = True
    return web.json_response({"items": iso_times(items, *_TIMES), "next": next_cursor(request, before) if more and before else None})


@router.route("GET", "/assemblies/{id}", summary="One assembly job, with its log", response=AssemblyOut,
              action=Access.REPOSITORY)
async def get_assembly(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(404, f"no assembly job {raw[:30]!r}")
    job = await request.app[PACKER].assembly.get(int(raw))
    if job is None:
        raise ApiError(404, f"no assembly job {raw}")
    await authorize(request, Action.PULL, job["target"]["repository"])
    return web.json_response(iso_times(await _redacted(request, job), *_TIMES))


async def _redacted(request: web.Request, job: dict[str, Any]) -> dict[str, Any]:
    """A job as this caller may see it: one who may pull the business package but not its
    source loses the source, the plugins it may not pull, the log and the error detail
    (both name the source and plugins)."""
    if await may(request, Action.PULL, job["source"]["repository"]):
        plugins = [p for p in job["plugins"] if await may(request, Action.PULL, p["repository"])]
        return {**job, "plugins": plugins} if len(plugins) < len(job["plugins"]) else job
    error = {"reason": "the job failed; its detail names sources you may not read"} if job["error"] else None
    return {**job, "source": None, "plugins": [], "error": error, **({"logs": None} if "logs" in job else {})}
