"""``/api/v1/subscriptions``: webhooks on events, and their delivery attempts.

Every route needs registry-wide ``manage`` (admin): a subscription chooses a URL algomint
will call and receives events about any repository its globs match. A URL that
``[webhooks] allow`` or ``[outbound]`` refuses is answered 422 naming the reason."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from packer.outbound import OutboundRefused
from packer.webhooks import DELIVERY_STATUSES, SubscriptionPatch, SubscriptionSpec

from ..state import PACKER
from .errors import ApiError
from .times import iso_times
from .router import Access, ApiRouter, Page, enum_query, next_cursor, page_params, parse_body

__all__ = ["router"]

router = ApiRouter("subscriptions")


class SubscriptionOut(BaseModel):
    id: str
    url: str
    events: list[str]
    repositories: list[str]
    description: str
    active: bool
    created: str = Field(description="ISO 8601, UTC")
    updated: str


class SubscriptionCreated(SubscriptionOut):
    # Shown once: receivers verify X-Algomint-Signature with it.
    secret: str


class Attempt(BaseModel):
    attempt: int
    at: str
    duration_ms: float
    status: int | None
    error: str | None


class DeliveryOut(BaseModel):
    id: int
    event_id: str
    event_type: str
    repository: str
    status: Literal["pending", "delivered", "dead"]
    attempts: int
    next_attempt: str | None
    last_status: int | None
    last_error: str | None
    created: str
    delivered: str | None
    history: list[Attempt]


def _refused(exc: OutboundRefused) -> ApiError:
    return ApiError(422, "subscription URL refused", {"fields": [{"field": "url", "message": exc.reason}]})


def _out(value: Any) -> Any:
    return iso_times(value, "created", "updated", "at", "next_attempt", "delivered")


async def _existing(request: web.Request) -> dict[str, Any]:
    sub = await request.app[PACKER].subscriptions.get(request.match_info["id"])
    if sub is None:
        raise ApiError(404, f"no subscription {request.match_info['id'][:64]!r}")
    return sub


@router.route("GET", "/subscriptions", summary="List subscriptions", response=Page[SubscriptionOut],
              query={"limit": "page size (1-500)", "cursor": "from the previous page's next"}, action=Access.MANAGE)
async def list_subscriptions(request: web.Request) -> web.Response:
    limit, cursor = page_params(request, cursor=str)
    items = await request.app[PACKER].subscriptions.list(limit, cursor)
    return web.json_response({"items": _out(items), "next": next_cursor(request, items[-1]["id"]) if len(items) == limit else None})


@router.route("POST", "/subscriptions", summary="Subscribe a URL to events (the secret is shown once)",
              body=SubscriptionSpec, response=SubscriptionCreated, status=201, action=Access.MANAGE)
async def create_subscription(request: web.Request) -> web.Response:
    spec = await parse_body(request, SubscriptionSpec)
    try:
        sub, secret = await request.app[PACKER].subscriptions.create(spec)
    except OutboundRefused as exc:
        raise _refused(exc) from None
    return web.json_response({**_out(sub), "secret": secret}, status=201)


@router.route("GET", "/subscriptions/{id}", summary="One subscription", response=SubscriptionOut, action=Access.MANAGE)
async def get_subscription(request: web.Request) -> web.Response:
    return web.json_response(_out(await _existing(request)))


@router.route("PATCH", "/subscriptions/{id}", summary="Change a subscription", body=SubscriptionPatch,
              response=SubscriptionOut, action=Access.MANAGE)
async def update_subscription(request: web.Request) -> web.Response:
    patch = await parse_body(request, SubscriptionPatch)
    try:
        sub = await request.app[PACKER].subscriptions.update(request.match_info["id"], patch)
    except OutboundRefused as exc:
        raise _refused(exc) from None
    if sub is None:
        raise ApiError(404, f"no subscription {request.match_info['id'][:64]!r}")
    return web.json_response(_out(sub))


@router.route("DELETE", "/subscriptions/{id}", summary="Delete a subscription and its pending deliveries", status=204, action=Access.MANAGE)
async def delete_subscription(request: web.Request) -> web.Response:
    if not await request.app[PACKER].subscriptions.delete(request.match_info["id"]):
        raise ApiError(404, f"no subscription {request.match_info['id'][:64]!r}")
    return web.Response(status=204)


@router.route("GET", "/subscriptions/{id}/deliveries", summary="Deliveries and every attempt, newest first",
              response=Page[DeliveryOut],
              query={"status": enum_query("only deliveries in this state", DELIVERY_STATUSES), "limit": "page size (1-500)",
                     "cursor": "from the previous page's next"}, action=Access.MANAGE)
async def list_deliveries(request: web.Request) -> web.Response:
    await _existing(request)
    limit, cursor = page_params(request, cursor=int)
    status = request.query.get("status")
    if status is not None and status not in DELIVERY_STATUSES:
        raise ApiError(400, "status must be pending, delivered or dead", {"status": status[:50]})
    items = await request.app[PACKER].subscriptions.deliveries(request.match_info["id"], limit, cursor, status)
    return web.json_response({"items": _out(items), "next": next_cursor(request, items[-1]["id"]) if len(items) == limit else None})


@router.route("POST", "/subscriptions/{id}/deliveries/{delivery}/retry",
              summary="Queue a delivery again (e.g. dead-lettered) with a fresh attempt budget", status=202, action=Access.MANAGE)
async def retry_delivery(request: web.Request) -> web.Response:
    await _existing(request)
    raw = request.match_info["delivery"]
    packer = request.app[PACKER]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or not await packer.subscriptions.redeliver(request.match_info["id"], int(raw)):
        raise ApiError(404, f"no delivery {raw[:30]!r} for this subscription")
    packer.webhooks.notify()
    return web.json_response({"delivery": int(raw), "status": "pending"}, status=202)
