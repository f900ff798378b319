"""``GET /api/v1/whoami``: the caller as the server sees it."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from ...api.state import CONFIG
from ...auth.permissions import TokenPrincipal
from ...auth.state import AUTH_STORE
from .grants import GrantOut, grant_out
from .principals import principal_of
from .router import Access, ApiRouter

__all__ = ["router"]

router = ApiRouter("whoami")


class WhoAmI(BaseModel):
    name: str
    kind: str
    authenticated: bool
    method: str | None
    token_id: str | None
    roles: list[str]
    grants: list[GrantOut]
    auth_enabled: bool


@router.route("GET", "/whoami", summary="Who the server thinks you are", action=Access.PUBLIC, response=WhoAmI)
async def show(request: web.Request) -> web.Response:
    principal = principal_of(request)
    grants: list[GrantOut] = []
    if not principal.is_anonymous:
        identity = await request.app[AUTH_STORE].identity(principal.name)
        grants = [grant_out(g) for g in identity.grants] if identity else []
    token = principal if isinstance(principal, TokenPrincipal) else None
    return web.json_response(WhoAmI(
        name=principal.name, kind=principal.kind, authenticated=not principal.is_anonymous,
        method=token.method if token else None, token_id=token.token_id if token else None,
        roles=sorted({g.role for g in grants}), grants=grants, auth_enabled=request.app[CONFIG].auth.enabled,
    ).model_dump(mode="json"))
