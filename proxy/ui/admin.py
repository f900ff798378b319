"""Admin pages: users and robots (create, disable, set a user's password), grants (create,
remove), the audit log and its verification, subscriptions (create, pause, delete) with their
webhook deliveries (and retry of dead letters). Each is the API's admins-only route underneath,
so a non-admin gets the API's 403 as a page, however the URL was found (a user's page checks
``manage`` first: the API also shows an account to its owner)."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from ..api.manage import audit, grants, subscriptions, users
from ..api.manage.errors import ApiError
from ..api.manage.router import Access, check_access
from ..api.state import CONFIG, PRINCIPAL
from .account import change_password
from .bridge import BRIDGE
from .context import SESSION, page, render
from .forms import field_errors

__all__ = ["add_routes"]

# The event names subscriptions take (DESIGN §6); the API refuses any other.
EVENTS = ("generic.pushed", "business.assembled", "assembly.failed", "full.built")
_AUDIT_FILTERS = ("actor", "action", "repository", "outcome", "since", "until", "cursor")


@page()
async def user_list(request: web.Request) -> web.StreamResponse:
    query = {"limit": "100", **({"cursor": request.query["cursor"]} if request.query.get("cursor") else {})}
    listing = await request.app[BRIDGE].call(request, users.index, query)
    return render(request, "users.html", {"title": "Users and robots", "users": listing["items"],
                                          "next": listing["next"], "values": {}, "errors": {}})


@page()
async def create_user(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    values = {k: str(form.get(k, "")) for k in ("name", "kind", "description")}
    body = {**values, "roles": [str(r) for r in form.getall("roles", [])]}
    if form.get("password"):
        body["password"] = str(form["password"])
    try:
        await request.app[BRIDGE].call(request, users.create, body=body)
    except ApiError as exc:
        if exc.status in (401, 403):
            raise
        listing = await request.app[BRIDGE].call(request, users.index)
        return render(request, "users.html", {"title": "Users and robots", "users": listing["items"],
                                              "next": listing["next"], "values": values,
                                              "errors": field_errors(exc, [*values, "password", "roles"])},
                      status=exc.status)
    request[SESSION].flash.append(f"Created {values['kind'] or 'user'} {values['name']}.")
    raise web.HTTPSeeOther("/ui/admin/users")


@page()
async def set_disabled(request: web.Request) -> web.StreamResponse:
    disabled = (await request.post()).get("disabled") == "true"
    await request.app[BRIDGE].call(request, users.update, body={"disabled": disabled})
    name = request.match_info["user"]
    request[SESSION].flash.append(f"{name} {'disabled: signed out everywhere' if disabled else 'enabled'}.")
    raise web.HTTPSeeOther("/ui/admin/users")


async def _user_page(request: web.Request, errors: dict[str, str], status: int = 200) -> web.Response:
    # The API shows an account to its owner too: this page is the admins' own, whoever it names.
    await check_access(request, Access.MANAGE)
    user = await request.app[BRIDGE].call(request, users.show)
    return render(request, "user.html", {"title": f"User {user['name']}", "user": user, "errors": errors,
                                         "own": user["name"] == request[PRINCIPAL].name,
                                         "min_length": request.app[CONFIG].auth.password_min_length},
                  status=status)


@page()
async def user(request: web.Request) -> web.StreamResponse:
    return await _user_page(request, {})


@page()
async def reset_password(request: web.Request) -> web.StreamResponse:
    """An admin sets a user's password (``PUT /api/v1/users/{user}/password``); their own takes
    the current one, as on the account page. The user's sessions end at their next request."""
    await check_access(request, Access.MANAGE)
    name = request.match_info["user"]
    refused = await change_password(request, name)
    if refused is not None:
        return await _user_page(request, *refused)
    request[SESSION].flash.append(f"Password of {name} set: every other console session of {name} is signed out.")
    raise web.HTTPSeeOther(f"/ui/admin/users/{quote(name, safe='')}")


@page()
async def grant_list(request: web.Request) -> web.StreamResponse:
    query = {k: v for k, v in request.query.items() if k in ("subject", "role", "cursor") and v}
    listing = await request.app[BRIDGE].call(request, grants.index, {**query, "limit": "100"})
    return render(request, "grants.html", {"title": "Grants", "grants": listing["items"], "next": listing["next"],
                                           "query": query, "values": {}, "errors": {},
                                           "roles": await request.app[BRIDGE].call(request, grants.roles)})


@page()
async def create_grant(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    values = {k: str(form.get(k, "")) for k in ("subject", "role", "pattern")}
    try:
        await request.app[BRIDGE].call(request, grants.create, body=values)
    except ApiError as exc:
        if exc.status in (401, 403):
            raise
        listing = await request.app[BRIDGE].call(request, grants.index)
        return render(request, "grants.html", {"title": "Grants", "grants": listing["items"], "next": listing["next"],
                                               "query": {}, "values": values, "errors": field_errors(exc, values),
                                               "roles": await request.app[BRIDGE].call(request, grants.roles)},
                      status=exc.status)
    request[SESSION].flash.append(f"Granted {values['role']} on {values['pattern']} to {values['subject']}.")
    raise web.HTTPSeeOther("/ui/admin/grants")


@page()
async def delete_grant(request: web.Request) -> web.StreamResponse:
    await request.app[BRIDGE].call(request, grants.delete)
    request[SESSION].flash.append(f"Grant {request.match_info['id']} removed.")
    raise web.HTTPSeeOther("/ui/admin/grants")


@page()
async def audit_log(request: web.Request) -> web.StreamResponse:
    query = {k: v for k, v in request.query.items() if k in _AUDIT_FILTERS and v}
    listing = await request.app[BRIDGE].call(request, audit.query, {**query, "limit": "50"})
    return render(request, "audit.html", {"title": "Audit log", "records": listing["items"], "next": listing["next"],
                                          "query": query, "filters": _AUDIT_FILTERS[:-1]})


@page()
async def verify_audit(request: web.Request) -> web.StreamResponse:
    result = await request.app[BRIDGE].call(request, audit.verify)
    return render(request, "audit_verify.html", {"title": "Audit chain verification", "result": result})


@page()
async def subscription_list(request: web.Request) -> web.StreamResponse:
    return await _subscriptions_page(request, {"repositories": "**"}, [], {})


async def _subscriptions_page(request: web.Request, values: dict[str, str], events: list[str],
                              errors: dict[str, str], status: int = 200) -> web.Response:
    # After a form post the request cannot take another query: the first page, as the API pages it.
    query = None if request.method == "POST" else {
        "limit": "100", **({"cursor": request.query["cursor"]} if request.query.get("cursor") else {})}
    listing = await request.app[BRIDGE].call(request, subscriptions.list_subscriptions, query)
    return render(request, "subscriptions.html", {"title": "Subscriptions", "subscriptions": listing["items"],
                                                  "next": listing["next"], "values": values, "chosen": events,
                                                  "events": EVENTS, "errors": errors}, status=status)


@page()
async def create_subscription(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    values = {k: str(form.get(k, "")) for k in ("url", "repositories", "description", "secret")}
    events = [str(e) for e in form.getall("events", [])]
    body = {"url": values["url"].strip(), "events": events, "description": values["description"],
            "repositories": [line.strip() for line in values["repositories"].splitlines() if line.strip()] or ["**"]}
    if values["secret"]:
        body["secret"] = values["secret"]
    try:
        created = await request.app[BRIDGE].call(request, subscriptions.create_subscription, body=body)
    except ApiError as exc:
        if exc.status in (401, 403):
            raise
        return await _subscriptions_page(request, {**values, "secret": ""}, events,
                                         field_errors(exc, ["url", "events", "repositories", "description", "secret"]),
                                         exc.status)
    # The signing secret is shown on this response only, as the API answers it once.
    return render(request, "subscription_created.html", {"title": "New subscription", "created": created}, status=201)


@page()
async def set_subscription_active(request: web.Request) -> web.StreamResponse:
    active = (await request.post()).get("active") == "true"
    await request.app[BRIDGE].call(request, subscriptions.update_subscription, body={"active": active})
    request[SESSION].flash.append(f"Subscription {'resumed' if active else 'paused'}.")
    raise web.HTTPSeeOther(f"/ui/admin/subscriptions/{quote(request.match_info['id'], safe='')}")


@page()
async def delete_subscription(request: web.Request) -> web.StreamResponse:
    await request.app[BRIDGE].call(request, subscriptions.delete_subscription, body=None)
    request[SESSION].flash.append("Subscription deleted, with its pending deliveries.")
    raise web.HTTPSeeOther("/ui/admin/subscriptions")


@page()
async def subscription(request: web.Request) -> web.StreamResponse:
    bridge = request.app[BRIDGE]
    item = await bridge.call(request, subscriptions.get_subscription)
    query = {k: v for k, v in request.query.items() if k in ("status", "cursor") and v}
    deliveries = await bridge.call(request, subscriptions.list_deliveries, {**query, "limit": "50"})
    return render(request, "subscription.html", {"title": f"Subscription {item['url']}", "subscription": item,
                                                 "deliveries": deliveries["items"], "next": deliveries["next"],
                                                 "query": query})


@page()
async def retry_delivery(request: web.Request) -> web.StreamResponse:
    await request.app[BRIDGE].call(request, subscriptions.retry_delivery, body=None)
    request[SESSION].flash.append(f"Delivery {request.match_info['delivery']} queued again.")
    raise web.HTTPSeeOther(f"/ui/admin/subscriptions/{quote(request.match_info['id'], safe='')}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/admin/users", user_list, name="ui.admin_users")
    app.router.add_post("/ui/admin/users", create_user, name="ui.admin_user_create")
    app.router.add_post("/ui/admin/users/{user}/disabled", set_disabled, name="ui.admin_user_disabled")
    app.router.add_get("/ui/admin/users/{user}", user, name="ui.admin_user")
    app.router.add_post("/ui/admin/users/{user}/password", reset_password, name="ui.admin_user_password")
    app.router.add_get("/ui/admin/grants", grant_list, name="ui.admin_grants")
    app.router.add_post("/ui/admin/grants", create_grant, name="ui.admin_grant_create")
    app.router.add_post("/ui/admin/grants/{id:\\d+}/delete", delete_grant, name="ui.admin_grant_delete")
    app.router.add_get("/ui/admin/audit", audit_log, name="ui.admin_audit")
    app.router.add_post("/ui/admin/audit/verify", verify_audit, name="ui.admin_audit_verify")
    app.router.add_get("/ui/admin/subscriptions", subscription_list, name="ui.admin_subscriptions")
    app.router.add_post("/ui/admin/subscriptions", create_subscription, name="ui.admin_subscription_create")
    app.router.add_get("/ui/admin/subscriptions/{id}", subscription, name="ui.admin_subscription")
    app.router.add_post("/ui/admin/subscriptions/{id}/active", set_subscription_active,
                        name="ui.admin_subscription_active")
    app.router.add_post("/ui/admin/subscriptions/{id}/delete", delete_subscription,
                        name="ui.admin_subscription_delete")
    app.router.add_post("/ui/admin/subscriptions/{id}/deliveries/{delivery}/retry", retry_delivery,
                        name="ui.admin_delivery_retry")
