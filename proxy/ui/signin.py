"""Sign-in and sign-out: the same accounts, passwords and failed-login throttle as the API.

The password goes through ``Authenticator.password`` (scrypt, the per user-and-address
throttle, disabled accounts refused) and each attempt is audited as an API login is.
A successful sign-in replaces the session (a new id and CSRF token)."""

from __future__ import annotations

import math

from aiohttp import web

from ..api.state import PRINCIPAL
from ..audit.middleware import record_request
from ..auth.authenticator import AuthFailure
from ..auth.state import AUTH
from .sessions import COOKIE
from .context import SESSION, SESSIONS, auth_on, page, redirect, render, set_session_cookie

__all__ = ["add_routes"]


def _next(raw: object) -> str:
    """Only a console path: never an open redirect."""
    if isinstance(raw, str) and raw.startswith("/ui/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/ui/"


@page(public=True)
async def login_form(request: web.Request) -> web.StreamResponse:
    if not auth_on(request) or not request[PRINCIPAL].is_anonymous:
        raise web.HTTPSeeOther(_next(request.query.get("next")))
    return render(request, "login.html", {"title": "Sign in", "next": _next(request.query.get("next")),
                                          "error": None, "username": ""})


@page(public=True)
async def login(request: web.Request) -> web.StreamResponse:
    if not auth_on(request):
        raise web.HTTPSeeOther("/ui/")
    form = await request.post()
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    target = _next(form.get("next"))
    try:
        if not username or not password:
            raise AuthFailure("empty credentials", "enter a user name and a password", claimed=username[:64] or None)
        credential = await request.app[AUTH].password(username[:256], password, request.remote)
    except AuthFailure as failure:
        status = 429 if failure.retry_after is not None else 401
        record_request(request, "login", status, outcome="denied", actor=failure.claimed or "anonymous",
                       actor_kind="anonymous", detail={"reason": failure.reason, "method": "console"})
        response = render(request, "login.html", {"title": "Sign in", "next": target, "username": username[:256],
                                                  "error": failure.message}, status=status)
        if failure.retry_after is not None:
            response.headers["Retry-After"] = str(math.ceil(failure.retry_after))
        return response
    sessions = request.app[SESSIONS]
    await sessions.end(request[SESSION].id)
    session = await sessions.new(credential.identity.user.name, credential.fingerprint)
    request[SESSION] = session
    request[PRINCIPAL] = credential.principal
    record_request(request, "login", 200, outcome="success", detail={"method": "console"})
    response = redirect(target)
    set_session_cookie(request, response, session)
    return response


@page(public=True)
async def logout(request: web.Request) -> web.StreamResponse:
    await request.app[SESSIONS].end(request[SESSION].id)  # refused by every replica at once
    response = redirect("/ui/login" if auth_on(request) else "/ui/")
    response.del_cookie(COOKIE, path="/ui")
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/login", login_form, name="ui.login_form")
    app.router.add_post("/ui/login", login, name="ui.login")
    app.router.add_post("/ui/logout", logout, name="ui.logout")
