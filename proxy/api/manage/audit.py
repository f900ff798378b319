"""``/api/v1/audit``: query the audit log and verify its hash chain (admins)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from ...audit import AuditQuery
from ...audit.middleware import AUDIT
from ...audit.records import iso_time
from ...auth.patterns import validate_pattern
from .errors import ApiError
from .router import ApiRouter, Page, encode_cursor, page_params

__all__ = ["router"]

router = ApiRouter("audit")

_OUTCOMES = ("success", "failure", "denied")


class AuditRecordOut(BaseModel):
    seq: int
    time: str
    actor: str
    actor_kind: str
    action: str
    repository: str | None
    reference: str | None
    digest: str | None
    outcome: Literal["success", "failure", "denied"]
    status: int | None
    client: str | None
    user_agent: str | None
    request_id: str | None
    detail: dict[str, Any] | None
    prev_hash: str
    hash: str


class ChainProblemOut(BaseModel):
    seq: int
    kind: Literal["altered", "removed", "reordered"]
    message: str


class VerifyOut(BaseModel):
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    problem: ChainProblemOut | None


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


@router.route("GET", "/audit", summary="Query the audit log, newest first", response=Page[AuditRecordOut],
              query={
                  "actor": "who acted (user, robot, or the name a failed login claimed)",
                  "action": "an action (`manifest.push`), or a prefix ending in `*` (`users.*`)",
                  "repository": "a repository pattern (`business/**`)",
                  "outcome": "success, failure or denied",
                  "since": "ISO 8601 time, inclusive",
                  "until": "ISO 8601 time, exclusive",
                  "limit": "page size (1-500)",
                  "cursor": "from the previous page's `next`",
              })
async def query(request: web.Request) -> web.Response:
    limit, cursor = page_params(request)
    if cursor is not None and not isinstance(cursor, int):
        raise ApiError(400, "invalid cursor")
    records, before = await request.app[AUDIT].query(_query(request), limit, cursor)
    page = Page[AuditRecordOut](items=[AuditRecordOut(**r.__dict__) for r in records],  # type: ignore[arg-type]
                                next=encode_cursor(before) if before is not None else None)
    return web.json_response(page.model_dump(mode="json"))


@router.route("POST", "/audit/verify", summary="Walk the hash chain; name the first altered, removed or reordered record",
              response=VerifyOut)
async def verify(request: web.Request) -> web.Response:
    result = await request.app[AUDIT].verify()
    problem = result.problem
    return web.json_response(VerifyOut(
        ok=result.ok, records=result.records, head_seq=result.head_seq, head_hash=result.head_hash,
        problem=ChainProblemOut(seq=problem.seq, kind=problem.kind, message=problem.message) if problem else None,  # type: ignore[arg-type]
    ).model_dump(mode="json"))
