"""``/api/v1/grants`` and ``/api/v1/roles``: who holds which role on which repositories."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from ...auth.patterns import validate_pattern
from ...auth.permissions import ROLES
from ...auth.state import AUTH_STORE
from ...auth.store import Grant
from .principals import iso, principal_of, store_errors
from .router import Access, ApiRouter, Page, page_params, parse_body, next_cursor

__all__ = ["router", "GrantOut", "grant_out"]

router = ApiRouter("grants")

RoleName = Literal["admin", "algorithm-dev", "business-dev", "consumer"]
assert set(RoleName.__args__) == set(ROLES)  # type: ignore[attr-defined]


class GrantOut(BaseModel):
    id: int
    subject: str
    role: RoleName
    pattern: str
    created_at: str
    created_by: str


class GrantCreate(BaseModel):
    subject: str = Field(min_length=1, max_length=64)
    role: RoleName
    pattern: str = Field(description="repository pattern: `*` within one segment, `**` any depth")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return validate_pattern(value)


class RoleOut(BaseModel):
    name: RoleName
    actions: list[str]
    defaults: list[str]
    description: str


def grant_out(grant: Grant) -> GrantOut:
    return GrantOut(id=grant.id, subject=grant.subject, role=grant.role, pattern=grant.pattern,  # type: ignore[arg-type]
                    created_at=iso(grant.created_at) or "", created_by=grant.created_by)


@router.route("GET", "/grants", summary="List grants", response=Page[GrantOut],
              query={"subject": "only this user's grants", "role": "only this role",
                     "limit": "page size (1-500)", "cursor": "from the previous page's `next`"}, action=Access.MANAGE)
async def index(request: web.Request) -> web.Response:
    limit, cursor = page_params(request, cursor=int)
    grants = await request.app[AUTH_STORE].list_grants(
        limit + 1, cursor, subject=request.query.get("subject"), role=request.query.get("role"))
    more = len(grants) > limit
    page = Page[GrantOut](items=[grant_out(g) for g in grants[:limit]],
                          next=next_cursor(request, grants[limit - 1].id) if more else None)
    return web.json_response(page.model_dump(mode="json"))


@router.route("POST", "/grants", summary="Grant a role on a repository pattern", body=GrantCreate,
              response=GrantOut, status=201, action=Access.MANAGE)
async def create(request: web.Request) -> web.Response:
    body = await parse_body(request, GrantCreate)
    with store_errors():
        grant = await request.app[AUTH_STORE].add_grant(body.subject, body.role, body.pattern,
                                                        created_by=principal_of(request).name)
    return web.json_response(grant_out(grant).model_dump(mode="json"), status=201)


@router.route("GET", "/grants/{id:\\d{1,18}}", summary="Show one grant", response=GrantOut, action=Access.MANAGE)
async def show(request: web.Request) -> web.Response:
    with store_errors():
        grant = await request.app[AUTH_STORE].get_grant(int(request.match_info["id"]))
    return web.json_response(grant_out(grant).model_dump(mode="json"))


@router.route("DELETE", "/grants/{id:\\d{1,18}}", summary="Remove a grant (the last admin's is kept)", status=204, action=Access.MANAGE)
async def delete(request: web.Request) -> web.Response:
    with store_errors():
        await request.app[AUTH_STORE].remove_grant(int(request.match_info["id"]))
    return web.Response(status=204)


@router.route("GET", "/roles", summary="The roles, their actions and default patterns", action=Access.SIGNED_IN,
              response=list[RoleOut])
async def roles(request: web.Request) -> web.Response:
    return web.json_response([
        RoleOut(name=r.name, actions=sorted(a.value for a in r.actions), defaults=list(r.defaults),  # type: ignore[arg-type]
                description=r.description).model_dump(mode="json")
        for r in ROLES.values()
    ])
