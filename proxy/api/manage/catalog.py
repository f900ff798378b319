"""``GET /api/v1/catalog``: what exists and what can be delivered, per generic algorithm.

Paginated by algorithm repository; every repository is shown only to callers who may pull
it (an algorithm whose generic repository is hidden still appears with the business
packages the caller may pull, without the generic digests)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Literal, Protocol

from aiohttp import web
from pydantic import BaseModel, Field

from ...service.policy import Action
from .access import may
from .router import CURSOR, LIMIT, Access, ApiRouter, Page, Query, next_cursor, page_params
from .times import iso_times

__all__ = ["router", "CATALOG", "CatalogSource"]

class CatalogSource(Protocol):
    """What the overview is read from (``packer.catalog.Catalog``, wired in ``proxy/app.py``)."""

    async def algorithms(self, limit: int, after: str | None, visible: Callable[[str], Awaitable[bool]]
                         ) -> tuple[list[dict[str, Any]], str | None]: ...


CATALOG = web.AppKey("catalog", CatalogSource)
router = ApiRouter("catalog")
_PAGE = 20  # algorithms per page by default: each carries its versions, packages and builds


class PluginUsed(BaseModel):
    ref: str | None
    name: str | None
    version: str | None
    digest: str | None


class AssemblyState(BaseModel):
    id: int
    status: Literal["queued", "running", "succeeded", "failed"]
    finished: str | None = Field(description="ISO 8601, UTC")


class LicensedImage(BaseModel):
    ref: str
    licensed: str
    digest: str


class FullBuildSummary(BaseModel):
    id: str
    license: str
    state: Literal["queued", "running", "succeeded", "failed"]
    tag: str | None
    digest: str | None
    images: list[LicensedImage]
    error: str | None
    finished: str | None


class BusinessPackage(BaseModel):
    system: str
    repository: str
    tag: str
    digest: str | None = Field(description="the last successfully assembled package; null if none yet")
    assembly: AssemblyState
    plugins: list[PluginUsed]
    full_builds: list[FullBuildSummary]


class AlgorithmVersion(BaseModel):
    version: str
    digest: str | None = Field(None, description="absent when the caller may not pull the generic repository")
    frozen: bool
    frozen_by: str | None
    platform: str | None = Field(None, description="the descriptor's platform (with the generic repository)")
    kind: Literal["server", "embedded"] | None = Field(
        None, description="embedded: the package carries its own models and no runtime images")
    packages: list[BusinessPackage]


class AlgorithmEntry(BaseModel):
    repository: str
    algorithm: str
    versions: list[AlgorithmVersion]


@router.route("GET", "/catalog", summary="Algorithms, versions, frozen state, business packages and full builds",
              response=Page[AlgorithmEntry], action=Access.SIGNED_IN,
              query={"limit": Query("algorithms per page", {**LIMIT.schema, "default": _PAGE}), "cursor": CURSOR})
async def catalog(request: web.Request) -> web.Response:
    limit, cursor = page_params(request, default=_PAGE, cursor=str)

    async def visible(repository: str) -> bool:
        return await may(request, Action.PULL, repository)

    items, last = await request.app[CATALOG].algorithms(limit, cursor, visible)
    return web.json_response({"items": iso_times(items, "finished"),
                              "next": next_cursor(request, last) if last is not None else None})
