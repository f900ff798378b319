"""``/api/v1/audit``: query the audit log and verify its hash chain (admins)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from aiohttp import web

from ...audit import AuditQuery, AuditRecord, VerifyResult
from ...audit.middleware import AUDIT
from ...audit.records import iso_time
from ...auth.patterns import validate_pattern
from .errors import ApiError
from .router import Access, ApiRouter, Page, enum_query, next_cursor, page_params

__all__ = ["router"]

router = ApiRouter("audit")

_OUTCOMES = ("success", "failure", "denied")


def _time(name: str, value: str | None) -> str | None:
    """An ISO 8601 instant in the log's canonical form (naive times are UTC)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, f"{name} must be an ISO 8601 time", {name: value[:64]}) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return iso_time(parsed.timestamp())


def _query(request: web.Request) -> AuditQuery:
    q = request.query
    outcome = q.get("outcome")
    if outcome is not None and outcome not in _OUTCOMES:
        raise ApiError(400, f"outcome must be one of {', '.join(_OUTCOMES)}", {"outcome": outcome[:32]})
    repository = q.get("repository")
    if repository is not None:
        try:
            validate_pattern(repository)
        except ValueError as exc:
            raise ApiError(400, str(exc), {"repository": repository[:300]}) from None
    return AuditQuery(actor=q.get("actor"), action=q.get("action"), repository=repository, outcome=outcome,
                      since=_time("since", q.get("since")), until=_time("until", q.get("until")))


@router.route("GET", "/audit", summary="Query the audit log, newest first", response=Page[AuditRecord],
              query={
                  "actor": "who acted (user, robot, or the name a failed login claimed)",
                  "action": "an action (`manifest.push`), or a prefix ending in `*` (`users.*`)",
                  "repository": "a repository pattern (`business/**`)",
                  "outcome": enum_query("success, failure or denied", _OUTCOMES),
                  "since": "ISO 8601 time, inclusive",
                  "until": "ISO 8601 time, exclusive",
                  "limit": "page size (1-500)",
                  "cursor": "from the previous page's `next`",
              }, action=Access.MANAGE)
async def query(request: web.Request) -> web.Response:
    limit, cursor = page_params(request, cursor=int)
    records, before = await request.app[AUDIT].query(_query(request), limit, cursor)
    return web.json_response({"items": [dataclasses.asdict(r) for r in records],
                              "next": next_cursor(request, before) if before is not None else None})


@router.route("POST", "/audit/verify", summary="Walk the hash chain; name the first altered, removed or reordered record",
              response=VerifyResult, action=Access.MANAGE)
async def verify(request: web.Request) -> web.Response:
    return web.json_response(dataclasses.asdict(await request.app[AUDIT].verify()))
