"""Your account: who the console thinks you are (roles and grants, as ``GET /api/v1/whoami``)
and changing your own password through ``PUT /api/v1/users/{user}/password`` (the current
password is asked for, as the API asks). A changed password ends every other session of the
account; this one carries on under the new password."""

from __future__ import annotations

from typing import Any, Mapping

from aiohttp import web

from ..api.manage import users, whoami
from ..api.manage.errors import ApiError
from ..api.state import PRINCIPAL
from ..auth.registry_token import password_fingerprint
from ..auth.state import AUTH_STORE
from .bridge import BRIDGE
from .context import SESSION, SESSIONS, page, render
from .forms import field_errors

__all__ = ["add_routes", "change_password", "keep_own_session"]


async def _account_page(request: web.Request, errors: dict[str, str], status: int = 200) -> web.Response:
    me = await request.app[BRIDGE].call(request, whoami.show)
    return render(request, "account.html", {"title": "Your account", "me": me, "errors": errors}, status=status)


@page()
async def account(request: web.Request) -> web.StreamResponse:
    return await _account_page(request, {})


def password_body(form: Mapping[str, Any]) -> dict[str, str] | None:
    """The API's body for a password form (new password twice, the current one for your
    own), or None when the two new passwords differ."""
    body = {"password": str(form.get("password", ""))}
    if form.get("current_password"):
        body["current_password"] = str(form["current_password"])
    return body if body["password"] == str(form.get("repeat", "")) else None


async def change_password(request: web.Request, name: str) -> tuple[dict[str, str], int] | None:
    """Set ``name``'s password from the posted form through the API: None once set (this
    session kept when it is the caller's own), else the errors to show beside the fields."""
    body = password_body(await request.post())
    if body is None:
        return {"repeat": "the two new passwords differ"}, 422
    try:
        await request.app[BRIDGE].call(request, users.set_password, body=body)
    except ApiError as exc:
        if exc.status == 401:
            raise
        if exc.status == 403 and name == request[PRINCIPAL].name:
            return {"current_password": exc.message}, 403
        return field_errors(exc, ["password", "current_password"]), exc.status
    await keep_own_session(request, name)
    return None


@page()
async def set_password(request: web.Request) -> web.StreamResponse:
    name = request.match_info["user"]
    refused = await change_password(request, name)
    if refused is not None:
        return await _account_page(request, *refused)
    request[SESSION].flash.append(f"Password of {name} changed.")
    raise web.HTTPSeeOther("/ui/account")


async def keep_own_session(request: web.Request, name: str) -> None:
    """After the password of ``name`` changed: when that is the caller's own, this session goes
    on under the new password; every other session of the account ends at its next request."""
    if name != request[PRINCIPAL].name:
        return
    identity = await request.app[AUTH_STORE].identity(name)
    if identity is not None:
        await request.app[SESSIONS].refingerprint(request[SESSION], password_fingerprint(identity.user.password_hash))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/account", account, name="ui.account")
    app.router.add_post("/ui/users/{user}/password", set_password, name="ui.user_password")
