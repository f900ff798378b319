"""``/token``: the registry token service (distribution token spec, OAuth2 form).

``GET /token?service=&scope=…[&offline_token=true]`` with Basic credentials (a password,
or an API token as the password) or none (anonymous); ``POST /token`` with a form body,
``grant_type=password`` (``username``, ``password``) or ``grant_type=refresh_token``.
The token carries only the requested actions the principal holds (down-scoping, not an
error). Refused credentials: ``401 UNAUTHORIZED`` with a Basic challenge, or ``429``;
a token asked for another service: ``403 DENIED``; a malformed OAuth2 form: ``400`` with
the RFC 6749 §5.2 body.

``GET /token/jwks`` (also ``/.well-known/jwks.json``) serves the public keys that verify
the tokens, and ``GET /token/certs.pem`` the same keys as X.509 certificates."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from ..api.state import CONFIG, PRINCIPAL
from ..audit.middleware import record_request
from ..oci.errors import Errors, RegistryError
from .authenticator import AuthFailure, Login
from .middleware import record_failure, refusal
from .permissions import grant_access
from .registry_token import Scope, parse_scopes
from .state import AUTH, AUTH_STORE, SIGNER

__all__ = ["get_token", "post_token", "get_jwks", "get_certificates", "add_token_routes"]

_MAX_FORM = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(code: str, description: str) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=400, headers=_NO_STORE)


def _check_service(request: web.Request, service: str | None) -> None:
    ours = request.app[CONFIG].auth.service
    if service and service != ours:
        raise RegistryError(Errors.DENIED, {"service": service[:128], "expected": ours},
                            message="this token service issues tokens for another service")


def _refused(request: web.Request, failure: AuthFailure, method: str) -> RegistryError:
    error = refusal(request, failure)
    if error.status == 401:  # the token service itself asks for Basic credentials
        error.headers["WWW-Authenticate"] = f'Basic realm="{request.app[CONFIG].auth.service}"'
    record_failure(request, failure, error.status, method)
    return error


def _issue(request: web.Request, login: Login | None, scopes: list[Scope], refresh: str | bool,
           grant: str) -> dict[str, Any]:
    config = request.app[CONFIG].auth
    signer = request.app[SIGNER]
    perms = login.identity.permissions if login else request.app[AUTH_STORE].anonymous
    access = grant_access(perms, scopes)
    if login is None:
        subject, kind, token_id = "anonymous", "anonymous", None
    else:
        subject, kind, token_id = login.principal.name, login.principal.kind, login.principal.token_id
        request[PRINCIPAL] = login.principal
    token, claims = signer.issue(subject, kind, use="access", ttl=config.token_ttl, access=access, token_id=token_id)
    body: dict[str, Any] = {
        "token": token,
        "access_token": token,
        "expires_in": config.token_ttl,
        "issued_at": datetime.fromtimestamp(claims.issued_at, timezone.utc).isoformat().replace("+00:00", "Z"),
        "scope": " ".join(f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access),
    }
    if login is not None and refresh:
        body["refresh_token"] = refresh if isinstance(refresh, str) else signer.issue(
            subject, kind, use="refresh", ttl=config.refresh_token_ttl, token_id=token_id,
            password_fingerprint=login.fingerprint)[0]
    if login is not None:
        record_request(request, "login", 200, outcome="success",
                       detail={"method": grant, "scope": body["scope"][:1000]})
    return body


async def get_token(request: web.Request) -> web.Response:
    _check_service(request, request.query.get("service"))
    scopes = parse_scopes(request.query.getall("scope", []))
    header = request.headers.get("Authorization")
    login = None
    if header is not None:
        try:
            login = await request.app[AUTH].login(header, request.remote)
        except AuthFailure as failure:
            raise _refused(request, failure, "basic") from None
    offline = request.query.get("offline_token", "").lower() == "true"
    return web.json_response(_issue(request, login, scopes, offline, "basic" if login else "anonymous"),
                             headers=_NO_STORE)


async def post_token(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > _MAX_FORM:
        return _oauth_error("invalid_request", f"form body exceeds {_MAX_FORM} bytes")
    raw = await request.content.read(_MAX_FORM + 1)
    if len(raw) > _MAX_FORM:
        return _oauth_error("invalid_request", f"form body exceeds {_MAX_FORM} bytes")
    try:
        form = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True, strict_parsing=bool(raw),
                                             max_num_fields=32).items()}
    except (UnicodeDecodeError, ValueError):
        return _oauth_error("invalid_request", "body must be application/x-www-form-urlencoded")
    _check_service(request, form.get("service"))
    scopes = parse_scopes([form.get("scope", "")])
    grant = form.get("grant_type")
    auth = request.app[AUTH]
    try:
        if grant == "password":
            username, password = form.get("username"), form.get("password")
            if not username or password is None:
                return _oauth_error("invalid_request", "grant_type=password needs username and password")
            login = await auth.credentials(username, password, request.remote)
            refresh: str | bool = form.get("access_type") == "offline"
        elif grant == "refresh_token":
            refresh_token = form.get("refresh_token")
            if not refresh_token:
                return _oauth_error("invalid_request", "grant_type=refresh_token needs refresh_token")
            login = await auth.refresh(refresh_token, request.remote)
            refresh = refresh_token  # returned unchanged: its lifetime is fixed at first login
        else:
            return _oauth_error("unsupported_grant_type", "grant_type must be password or refresh_token")
    except AuthFailure as failure:
        raise _refused(request, failure, grant or "") from None
    return web.json_response(_issue(request, login, scopes, refresh, grant), headers=_NO_STORE)


async def get_jwks(request: web.Request) -> web.Response:
    """The public keys that verify registry tokens (RFC 7517), every key still in the ring."""
    return web.json_response(request.app[SIGNER].keys.jwks(), headers={"Cache-Control": "max-age=60"})


async def get_certificates(request: web.Request) -> web.Response:
    """The same keys as self-signed X.509 certificates (PEM): a registry's ``rootcertbundle``."""
    return web.Response(body=request.app[SIGNER].keys.bundle(), content_type="application/x-pem-file",
                        headers={"Cache-Control": "max-age=60"})


def add_token_routes(app: web.Application) -> None:
    app.router.add_get("/token", get_token, name="auth.token.get")
    app.router.add_post("/token", post_token, name="auth.token.post")
    app.router.add_get("/token/jwks", get_jwks, name="auth.token.jwks")
    app.router.add_get("/.well-known/jwks.json", get_jwks, name="auth.jwks")
    app.router.add_get("/token/certs.pem", get_certificates, name="auth.token.certs")
