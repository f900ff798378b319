"""``/api/v1/assemblies``: assembly jobs with status, timings, plugin digests, errors and logs.

A job is visible to whoever may pull its business repository."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from packer.assembly import STATUSES

from ...service.policy import Action
from ..state import PACKER
from .access import may
from .errors import ApiError
from .times import iso_times
from .router import ApiRouter, Page, authorize, encode_cursor, enum_query, page_params

__all__ = ["router"]

router = ApiRouter("assemblies")
_TIMES = ("created", "started", "finished")


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
    status: Literal["queued", "running", "succeeded", "failed"]
    trigger: Literal["push", "api"]
    runs: int
    source: PackageRef
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
                     "cursor": "from the previous page's next"}, action=None)
async def list_assemblies(request: web.Request) -> web.Response:
    limit, cursor = page_params(request, cursor=int)
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}", {"status": status[:50]})
    items = await request.app[PACKER].assembly.list(
        limit, cursor, status, request.query.get("chain"), request.query.get("repository")
    )
    next_cursor = encode_cursor(items[-1]["id"]) if len(items) == limit else None
    visible = [job for job in items if await may(request, Action.PULL, job["target"]["repository"])]
    return web.json_response({"items": iso_times(visible, *_TIMES), "next": next_cursor})


@router.route("GET", "/assemblies/{id}", summary="One assembly job, with its log", response=AssemblyOut, action=None)
async def get_assembly(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(404, f"no assembly job {raw[:30]!r}")
    job = await request.app[PACKER].assembly.get(int(raw))
    if job is None:
        raise ApiError(404, f"no assembly job {raw}")
    await authorize(request, Action.PULL, job["target"]["repository"])
    return web.json_response(iso_times(job, *_TIMES))
