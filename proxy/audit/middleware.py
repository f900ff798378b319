"""Recording HTTP requests in the audit log.

What is recorded (one record per request, after the response status is known):
mutations on ``/v2`` (manifest push/delete, blob push/delete, upload cancel) and on
``/api/v1`` (every non-GET), pulls of manifests in ``[audit] pull_patterns``, every
request under ``/api/v1/archive/``, and every refusal (403) anywhere. Logins are
recorded where they happen (the authentication middleware and ``/token``), which mark
the request so it isn't recorded twice. Handlers may add fields with ``annotate``.
Nothing secret is recorded: no headers besides the user agent, no query, no body.

No answer to a request for a change (any method but GET, HEAD and OPTIONS; refused or
not) goes out before the records of its request are durable: the middleware waits for
them (group commit, see ``AuditLog``) before it hands the response on, so a client told
that a change happened can rely on its record surviving a crash. Reads are answered at
once; their records (pulls, downloads, logins) follow within ``flush_interval``. If the store
cannot write within ``[audit] ack_timeout`` the answer is 503 instead: the change may
have been made, but it is not acknowledged without its record."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..api.manage.errors import from_registry_error
from ..api.state import CONFIG, DATABASE, PRINCIPAL, REQUEST_ID
from ..auth.patterns import compile_pattern
from ..api.middleware import json_error
from ..oci.errors import Errors, RegistryError
from ..service.policy import ANONYMOUS
from .log import AuditLog
from .records import AuditEvent

__all__ = ["AUDIT", "ARCHIVE_PREFIX", "audit_requests", "annotate", "record_request", "outcome_of", "mark_recorded",
           "setup_audit"]

AUDIT = web.AppKey("audit", AuditLog)
_RECORDED = "algomint.audit.recorded"
_TICKET = "algomint.audit.ticket"  # the last record this request made
_ACK_TIMEOUT = web.AppKey("audit_ack_timeout", float)
_ANNOTATIONS = "algomint.audit.fields"
_PULL_PATTERNS = web.AppKey("audit_pull_patterns", list)
ARCHIVE_PREFIX = "/api/v1/archive/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# /v2 route -> audit action. Mutations are always recorded; reads only when refused
# (or, for manifests, when the repository matches the pull patterns).
_V2_ACTIONS = {
    "v2.manifest.put": "manifest.push",
    "v2.manifest.delete": "manifest.delete",
    "v2.blob.delete": "blob.delete",
    "v2.upload.finish": "blob.push",
    "v2.upload.cancel": "upload.cancel",
    "v2.upload.start": "blob.push",
    "v2.upload.patch": "blob.push",
    "v2.upload.status": "blob.push",
    "v2.manifest.get": "manifest.pull",
    "v2.blob.get": "blob.pull",
    "v2.tags": "tags.list",
    "v2.catalog": "catalog.list",
    "v2.referrers": "referrers.list",
    "v2.base": "registry.probe",
}
_ALWAYS = frozenset({"v2.manifest.put", "v2.manifest.delete", "v2.blob.delete", "v2.upload.finish", "v2.upload.cancel"})
# A session opened or a chunk written is part of a push, recorded when it completes.
_SESSION_STEPS = frozenset({"v2.upload.start", "v2.upload.patch", "v2.upload.status"})
_REFUSED = frozenset({401, 403, 429})
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def outcome_of(status: int) -> str:
    if status < 400:
        return "success"
    return "denied" if status in _REFUSED else "failure"


def annotate(request: web.Request, *, repository: str | None = None, reference: str | None = None,
             digest: str | None = None, detail: dict[str, Any] | None = None) -> None:
    """Say what this request acted on, for its audit record (a handler knows better than the URL)."""
    given = {"repository": repository, "reference": reference, "digest": digest, "detail": detail}
    request.setdefault(_ANNOTATIONS, {}).update({k: v for k, v in given.items() if v is not None})


def mark_recorded(request: web.Request) -> None:
    request[_RECORDED] = True


def record_request(request: web.Request, action: str, status: int, *, outcome: str | None = None,
                   actor: str | None = None, actor_kind: str | None = None, final: bool = True,
                   **fields: Any) -> None:
    """Record ``action`` with this request's context; ``final`` marks the request recorded."""
    principal = request.get(PRINCIPAL) or ANONYMOUS
    annotations = request.get(_ANNOTATIONS, {})
    extra = {**fields, **annotations}  # what the handler said wins over what the URL suggests
    detail = {**(fields.get("detail") or {}), **(annotations.get("detail") or {})} or None
    extra.pop("detail", None)
    request[_TICKET] = request.app[AUDIT].record(AuditEvent(
        action=action,
        outcome=outcome or outcome_of(status),
        actor=(actor or principal.name)[:256],
        actor_kind=actor_kind or principal.kind,
        status=status,
        client=request.remote,
        user_agent=request.headers.get("User-Agent", "")[:256] or None,
        request_id=request.get(REQUEST_ID),
        detail=detail,
        **{k: (str(v)[:300] if v is not None else None) for k, v in extra.items()},
    ))
    if final:
        mark_recorded(request)


def _v2_action(request: web.Request, route: str, status: int) -> str | None:
    if route in _ALWAYS:
        return _V2_ACTIONS[route]
    if route in _SESSION_STEPS:
        return _V2_ACTIONS[route] if status == 201 or status >= 400 else None
    if route == "v2.manifest.get" and request.method == "GET":
        name = request.match_info.get("name", "")
        if any(p.fullmatch(name) for p in request.app[_PULL_PATTERNS]):
            return _V2_ACTIONS[route]
    return _V2_ACTIONS.get(route) if status == 403 else None


def _fields(request: web.Request, response: web.StreamResponse | None) -> dict[str, Any]:
    info = request.match_info
    fields: dict[str, Any] = {}
    if request.path.startswith("/v2/"):
        fields["repository"] = info.get("name")
        fields["reference"] = info.get("reference") or info.get("digest")
        digest = response.headers.get("Docker-Content-Digest") if response is not None else None
        fields["digest"] = digest or request.query.get("digest") or info.get("digest")
    elif request.path.startswith(ARCHIVE_PREFIX):
        # <repository>:<tag> or <repository>@<digest> (DESIGN §5, streaming delivery)
        target = request.path[len(ARCHIVE_PREFIX):]
        if "@" in target:
            name, digest = target.split("@", 1)
            fields.update(repository=name, reference=digest, digest=digest)
        else:
            name, _, tag = target.rpartition(":") if ":" in target else (target, "", "")
            fields.update(repository=name, reference=tag or None)
    else:
        fields["detail"] = {"method": request.method, "path": request.path[:300]}
    return fields


@web.middleware
async def audit_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _record(request, exc.status, None)
        if await _durable(request):
            raise
        return _unrecorded(request)
    except asyncio.CancelledError:
        _record(request, 499, None)  # the client went away mid-request: nobody to answer
        raise
    except BaseException:
        _record(request, 500, None)
        raise
    _record(request, response.status, response)
    if response.prepared or await _durable(request):  # a prepared (streamed) answer is already out
        return response
    return _unrecorded(request)


def _record(request: web.Request, status: int, response: web.StreamResponse | None) -> None:
    if request.get(_RECORDED):
        return
    route = request.match_info.route.name or ""
    action: str | None = None
    if route.startswith("v2."):
        action = _v2_action(request, route, status)
    elif request.path.startswith(ARCHIVE_PREFIX) and request.method in ("GET", "HEAD"):
        action = "archive.download"
    elif route.startswith("api.") and (request.method not in ("GET", "HEAD") or status == 403):
        action = route[4:]
    if action is not None:
        record_request(request, action, status, **_fields(request, response))


async def _durable(request: web.Request) -> bool:
    """Wait until every record this request made is on disk, when the request asked for a
    change (reads, and the logins and refusals they record, are answered at once)."""
    ticket = request.get(_TICKET, 0)
    if ticket == 0 or request.method in _READS:
        return True
    return await request.app[AUDIT].durable(ticket, request.app[_ACK_TIMEOUT])


def _unrecorded(request: web.Request) -> web.Response:
    """The answer when the record could not be written in time, in the API's own shape."""
    error = RegistryError(Errors.UNAVAILABLE, message="audit log unavailable: the request was not acknowledged "
                                                      "because its audit record could not be written")
    request_id = request.get(REQUEST_ID)
    if request.path.startswith("/api/"):
        return from_registry_error(error).response(request_id)
    return json_error(error, request_id)


def setup_audit(app: web.Application) -> None:
    """Install the log and its lifetime; call after the metadata store's lifetime is
    registered, so the log is flushed before the store closes."""
    config = app[CONFIG].audit
    app[AUDIT] = log = AuditLog(app[DATABASE], enabled=config.enabled, flush_interval=config.flush_interval,
                                batch_size=config.batch_size, sync=config.sync == "full")
    app[_PULL_PATTERNS] = [compile_pattern(p) for p in config.pull_patterns]
    app[_ACK_TIMEOUT] = config.ack_timeout

    async def lifetime(app: web.Application):
        await log.start()
        yield
        await log.close()

    app.cleanup_ctx.append(lifetime)
