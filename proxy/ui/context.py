"""What every console request goes through: its session, its principal, CSRF, errors as pages.

The principal of a console request is built from the session's account exactly as the
authenticator builds one for a password (roles from the current grants), re-read on every
request; the policy then decides as it does for the API. With ``[auth] enabled = false``
everyone is the anonymous principal, which the policy lets do everything, as on the API."""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from ..api.manage.errors import ApiError
from ..api.state import CONFIG, PRINCIPAL
from ..audit.middleware import record_request
from ..auth.permissions import TokenPrincipal
from ..auth.registry_token import password_fingerprint
from ..auth.state import AUTH_STORE
from ..oci.errors import Errors, RegistryError
from ..service.policy import ANONYMOUS, Principal
from .sessions import COOKIE, FLASH_COOKIE, Session, SessionStore

__all__ = ["SESSIONS", "SESSION", "page", "render", "auth_on", "set_session_cookie", "error_page", "redirect", "CSRF_FIELD"]

SESSIONS = web.AppKey("ui_sessions", SessionStore)
SESSION = "algomint.ui.session"
CSRF_FIELD = "csrf"
MAX_FORM = 2 * 1024 * 1024
PageHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Pages are never cached, framed or sniffed; scripts and styles come only from /ui/static.
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def auth_on(request: web.Request) -> bool:
    return request.app[CONFIG].auth.enabled


async def _principal(request: web.Request, session: Session) -> Principal:
    """The session's account as a principal, or anonymous (and the session signed out)
    when the account is gone, disabled or its password changed since sign-in."""
    if not auth_on(request) or session.user is None:
        return ANONYMOUS
    identity = await request.app[AUTH_STORE].identity(session.user)
    if identity is None or identity.user.disabled:
        await request.app[SESSIONS].end(session.id)  # on every replica, not only here
        session.user = session.fingerprint = None
        return ANONYMOUS
    if password_fingerprint(identity.user.password_hash) != session.fingerprint:
        # Refused, row kept: this replica's account cache may be a second behind a change
        # made on another one that kept this very session (its own password, changed here).
        session.user = session.fingerprint = None
        return ANONYMOUS
    roles = tuple(dict.fromkeys(g.role for g in identity.grants))
    return TokenPrincipal(identity.user.name, identity.user.kind, roles, method="console")


def set_session_cookie(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", secure=request.secure, path="/ui")


def page(*, public: bool = False) -> Callable[[PageHandler], PageHandler]:
    """Wrap a console handler: session, principal, CSRF on every POST, sign-in when needed,
    API refusals rendered as pages with the same status."""

    def wrap(fn: PageHandler) -> PageHandler:
        @functools.wraps(fn)
        async def handler(request: web.Request) -> web.StreamResponse:
            sessions = request.app[SESSIONS]
            polling = request.headers.get("HX-Request") == "true" and request.method == "GET"
            session = await sessions.get(request.cookies.get(COOKIE), touch=not polling)
            fresh = session is None
            if session is None:
                session = await sessions.new()
            session.flash = sessions.open_flash(request.cookies.get(FLASH_COOKIE))
            request[SESSION] = session
            request[PRINCIPAL] = await _principal(request, session)
            response: web.StreamResponse
            if request.method == "POST":
                # Forms are read whole: only ones with a declared, modest size (the API's
                # bodies are capped at 1 MiB too; base64 and form encoding add a third).
                if request.content_length is None or request.content_length > MAX_FORM:
                    response = error_page(request, 413, f"forms are limited to {MAX_FORM} bytes")
                    _audit(request, response.status)
                    return _finish(request, response, session)
                form = await request.post()
                token = form.get(CSRF_FIELD)
                if fresh or not session.csrf_ok(token if isinstance(token, str) else None):
                    response = error_page(request, 403, "This form has expired or did not come from this console. "
                                                        "Reload the page and try again.")
                    _audit(request, response.status)
                    return _finish(request, response, session)
            if not public and auth_on(request) and request[PRINCIPAL].is_anonymous:
                target = request.path_qs if request.method == "GET" else "/ui/"
                response = redirect(f"/ui/login?next={quote(target, safe='')}")
                return _finish(request, response, session)
            try:
                response = await fn(request)
            except ApiError as exc:
                # 401: the account changed under the session (the API's "no longer valid").
                response = redirect("/ui/login") if exc.status == 401 else error_page(request, exc.status, exc.message)
            except RegistryError as exc:
                if exc.status == 401:
                    response = redirect("/ui/login")
                else:
                    status = 404 if exc.error in (Errors.NAME_UNKNOWN, Errors.MANIFEST_UNKNOWN) else exc.status
                    response = error_page(request, status, exc.message or exc.error.name)
            except web.HTTPRedirection as exc:
                response = redirect(exc.location, exc.status)
            _audit(request, response.status)
            return _finish(request, response, session)

        return handler

    return wrap


# Console routes that act as an API route are recorded under that route's audit action.
_AUDIT_ACTIONS = {"ui.build_start": "full-builds.create_full_build", "ui.logout": "logout",
                  "ui.system_new": "chains.create_chain", "ui.system_edit": "chains.update_chain",
                  "ui.system_assemble": "chains.assemble_chain", "ui.admin_audit_verify": "audit.verify",
                  "ui.admin_delivery_retry": "subscriptions.retry_delivery",
                  "ui.token_create": "tokens.create", "ui.token_revoke": "tokens.revoke",
                  "ui.plugin_push": "plugins.push_plugin", "ui.admin_user_create": "users.create",
                  "ui.admin_grant_create": "grants.create", "ui.admin_grant_delete": "grants.delete",
                  "ui.admin_user_disabled": "users.update", "ui.user_password": "users.set_password",
                  "ui.admin_user_password": "users.set_password", "ui.admin_gc_start": "gc.start_gc",
                  "ui.system_delete": "chains.delete_chain", "ui.systems_reload": "chains.reload_chains",
                  "ui.admin_subscription_create": "subscriptions.create_subscription",
                  "ui.admin_subscription_active": "subscriptions.update_subscription",
                  "ui.admin_subscription_delete": "subscriptions.delete_subscription"}


def _audit(request: web.Request, status: int) -> None:
    """Record what the API would have recorded: every download, every change, every refusal."""
    route = request.match_info.route.name or ""
    if route == "ui.login":
        return  # sign-in records its own attempts, as the authentication middleware does
    if route == "ui.archive":
        target = request.match_info["target"]
        name, sep, reference = target.partition("@") if "@" in target else target.rpartition(":")
        if not sep:
            name, reference = target, ""
        record_request(request, "archive.download", status, repository=name[:300], reference=reference or None,
                       detail={"via": "console"})
    elif request.method == "POST" or status == 403:
        record_request(request, _AUDIT_ACTIONS.get(route, route), status,
                       detail={"method": request.method, "path": request.path[:300], "via": "console"})


def redirect(location: object, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"Location": str(location)})


def _finish(request: web.Request, response: web.StreamResponse, session: Session) -> web.StreamResponse:
    session = request.get(SESSION, session)  # sign-in replaces it
    if not response.prepared:
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        if COOKIE not in response.cookies and request.cookies.get(COOKIE) != session.id:
            set_session_cookie(request, response, session)
        # Flash messages ride in their own signed cookie until a page shows them: no row, any replica.
        if session.flash:
            response.set_cookie(FLASH_COOKIE, request.app[SESSIONS].seal_flash(session.flash), httponly=True,
                                samesite="Strict", secure=request.secure, path="/ui")
        elif FLASH_COOKIE in request.cookies:
            response.del_cookie(FLASH_COOKIE, path="/ui")
    return response


def render(request: web.Request, template: str, context: Mapping[str, Any], status: int = 200) -> web.Response:
    principal = request.get(PRINCIPAL, ANONYMOUS)
    session: Session = request[SESSION]
    base = {
        "principal": principal,
        "signed_in": not principal.is_anonymous,
        "auth_on": auth_on(request),
        "csrf": session.csrf,
        "flash": session.flash[:],
        "path": request.path,
    }
    session.flash.clear()
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Rejected",
              429: "Too many attempts"}
    return render(request, "error.html", {"title": titles.get(status, "Error"), "status": status,
                                          "message": message}, status=status)

