"""``/api/v1/full-builds``: start a licensed full build, follow its progress, list builds.

Starting a build is not a registry-wide right: the builder checks that the caller may
pull every source of the package and write every target (``manage`` on the business
repository, ``push`` on each runtime image repository), and records the caller, whose
rights the build runs with. A build is shown to whoever may pull its business package."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from packer.fullbuild.names import BuildInputError
from packer.fullbuild.service import FullBuildService
from packer.fullbuild.store import STATES

from ...service.policy import Action
from .access import caller
from .errors import ApiError
from .times import iso_times
from .router import Access, ApiRouter, Page, authorize, enum_query, next_cursor, page_params, parse_body, time_id_cursor

__all__ = ["router", "FULL_BUILDS"]

FULL_BUILDS = web.AppKey("full_builds", FullBuildService)
router = ApiRouter("full-builds")


class FullBuildRequest(BaseModel):
    package: str = Field(min_length=1, max_length=600, description="business/<system>/<algorithm>:<version>")
    license: str = Field(min_length=1, max_length=64, description="a configured license kind")


class LayerView(BaseModel):
    image: str
    position: int
    digest: str
    size: int
    state: Literal["pending", "scanning", "rewriting", "rewritten", "reused", "failed"]
    bytes_done: int
    result_digest: str | None = None
    diff_id: str | None = None
    encrypted_files: int = 0


class FullBuildView(BaseModel):
    id: str
    package: str
    license: str
    source_digest: str
    state: Literal["queued", "running", "succeeded", "failed"]
    created_at: str = Field(description="ISO 8601, UTC")
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int
    bytes_total: int
    bytes_done: int
    result: dict[str, Any] | None = None
    error: str | None = None
    warnings: list[str] = []
    layers: list[LayerView] = []


def _out(build: dict[str, Any]) -> dict[str, Any]:
    return iso_times(build, "created_at", "started_at", "finished_at")


def _input_error(exc: BuildInputError) -> ApiError:
    return ApiError(exc.status, exc.message, exc.detail)


@router.route("POST", "/full-builds", summary="Start a full build of a business package for a license kind",
              body=FullBuildRequest, response=FullBuildView, status=202, action=Access.REPOSITORY)
async def create_full_build(request: web.Request) -> web.Response:
    body = await parse_body(request, FullBuildRequest)
    try:
        record, created = await request.app[FULL_BUILDS].submit(body.package, body.license, caller(request))
    except BuildInputError as exc:
        raise _input_error(exc) from None
    location = f"/api/v1/full-builds/{record.id}"
    # 202 for a queued (or already running) build; 200 when this content is already built.
    status = 200 if not created and record.state == "succeeded" else 202
    return web.json_response(_out(record.to_json(layers=False)), status=status, headers={"Location": location})


@router.route("GET", "/full-builds/{id}", summary="A full build: state, bytes processed/total, per-layer progress",
              response=FullBuildView, action=Access.REPOSITORY)
async def get_full_build(request: web.Request) -> web.Response:
    build_id = request.match_info["id"]
    record = await request.app[FULL_BUILDS].get(build_id) if len(build_id) <= 64 else None
    if record is None:
        raise ApiError(404, f"no full build {build_id[:64]}")
    await authorize(request, Action.PULL, record.repository)
    return web.json_response(_out(record.to_json()))


@router.route("GET", "/full-builds", summary="Full builds, newest first", response=Page[FullBuildView],
              query={"package": "only builds of this package", "state": enum_query("only builds in this state", STATES),
                     "limit": "page size (1-500)", "cursor": "from the previous page's next"}, action=Access.MANAGE)
async def list_full_builds(request: web.Request) -> web.Response:
    limit, cursor = page_params(request, cursor=time_id_cursor)
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise ApiError(400, "state must be queued, running, succeeded or failed", {"state": state[:20]})
    records = await request.app[FULL_BUILDS].list(limit + 1, cursor, package=request.query.get("package"), state=state)
    more = len(records) > limit
    records = records[:limit]
    following = next_cursor(request, [records[-1].created_at, records[-1].id]) if more and records else None
    return web.json_response({"items": [_out(r.to_json(layers=False)) for r in records], "next": following})
