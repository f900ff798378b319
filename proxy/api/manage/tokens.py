"""``/api/v1/tokens``: API tokens — your own, or anyone's as admin. The secret is shown once."""

from __future__ import annotations

import time
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from ...api.state import CONFIG
from ...auth.state import AUTH_STORE
from ...auth.store import ApiTokenRecord
from .errors import ApiError
from .principals import can_manage, iso, principal_of, require_authenticated, store_errors
from .router import Access, ApiRouter, Page, page_params, parse_body, next_cursor

__all__ = ["router"]

router = ApiRouter("tokens")


class TokenOut(BaseModel):
    id: str
    owner: str
    name: str
    state: Literal["active", "expired", "revoked"]
    created_at: str
    created_by: str
    expires_at: str
    revoked_at: str | None
    last_used_at: str | None


class TokenCreated(TokenOut):
    token: str = Field(description="the secret: shown only in this response; store it now")


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="what the token is for")
    owner: str | None = Field(None, description="another user or robot (admins only); default: yourself")
    expires_in: int | None = Field(None, gt=0, description="lifetime in seconds (default and maximum from config)")


def token_out(record: ApiTokenRecord) -> dict:
    return TokenOut(id=record.id, owner=record.owner, name=record.name, state=record.state(time.time()),  # type: ignore[arg-type]
                    created_at=iso(record.created_at) or "", created_by=record.created_by,
                    expires_at=iso(record.expires_at) or "", revoked_at=iso(record.revoked_at),
                    last_used_at=iso(record.last_used_at)).model_dump(mode="json")


async def _own_scope(request: web.Request) -> str | None:
    """None when the caller manages users (every token is theirs to see); else the
    caller's own name (anonymous callers get 401)."""
    if await can_manage(request):
        return None
    return require_authenticated(request).name


async def _visible(request: web.Request) -> ApiTokenRecord:
    """The token named in the path, if the caller may see it; 404 otherwise (no probing)."""
    mine = await _own_scope(request)
    token_id = request.match_info["id"]
    with store_errors():
        record = await request.app[AUTH_STORE].get_token(token_id)
    if mine is not None and record.owner != mine:
        raise ApiError(404, f"no token {token_id!r}")
    return record


@router.route("GET", "/tokens", summary="List your tokens (admins: everyone's, or one owner's)", action=Access.SIGNED_IN,
              response=Page[TokenOut],
              query={"owner": "only this owner's tokens", "limit": "page size (1-500)",
                     "cursor": "from the previous page's `next`"})
async def index(request: web.Request) -> web.Response:
    mine = await _own_scope(request)
    owner = request.query.get("owner")
    if mine is not None:
        if owner not in (None, mine):
            raise ApiError(403, "only admins list other users' tokens")
        owner = mine
    limit, cursor = page_params(request, cursor=str)
    records = await request.app[AUTH_STORE].list_tokens(limit + 1, cursor, owner=owner)
    page = {"items": [token_out(r) for r in records[:limit]],
            "next": next_cursor(request, records[limit - 1].id) if len(records) > limit else None}
    return web.json_response(page)


@router.route("POST", "/tokens", summary="Create an API token (shown once)", action=Access.SIGNED_IN, body=TokenCreate,
              response=TokenCreated, status=201)
async def create(request: web.Request) -> web.Response:
    body = await parse_body(request, TokenCreate)
    mine = await _own_scope(request)
    caller = principal_of(request)
    owner = body.owner or caller.name
    if mine is not None and owner != mine:
        raise ApiError(403, "only admins create tokens for other users")
    if caller.is_anonymous and body.owner is None:
        raise ApiError(422, "request body failed validation",
                       {"fields": [{"field": "owner", "message": "required without credentials"}]})
    config = request.app[CONFIG].auth
    ttl = body.expires_in or config.api_token_ttl
    if ttl > config.api_token_max_ttl:
        raise ApiError(422, "request body failed validation",
                       {"fields": [{"field": "expires_in", "message": f"at most {config.api_token_max_ttl} seconds"}]})
    with store_errors():
        record, secret = await request.app[AUTH_STORE].create_token(owner, body.name, time.time() + ttl,
                                                                    created_by=caller.name)
    return web.json_response({**token_out(record), "token": secret}, status=201,
                             headers={"Cache-Control": "no-store"})


@router.route("GET", "/tokens/{id}", summary="Show a token (never its secret)", action=Access.SIGNED_IN, response=TokenOut)
async def show(request: web.Request) -> web.Response:
    return web.json_response(token_out(await _visible(request)))


@router.route("DELETE", "/tokens/{id}", summary="Revoke a token: it stops working at once", action=Access.SIGNED_IN, status=204)
async def revoke(request: web.Request) -> web.Response:
    record = await _visible(request)
    with store_errors():
        await request.app[AUTH_STORE].revoke_token(record.id)
    return web.Response(status=204)
