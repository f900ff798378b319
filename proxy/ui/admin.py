"""Admin pages: users and robots (create), grants (create, remove), the audit log and its verification,
subscriptions with their webhook deliveries (and retry of dead letters). Each is the API's admins-only
route underneath, so a non-admin gets the API's 403 as a page, however the URL was found."""

from __future__ import annotations

from aiohttp import web

from urllib.parse import quote

from ..api.manage import audit, grants, subscriptions, users
from .bridge import BRIDGE
from ..api.manage.errors import ApiError
from .context import SESSION, page, render
from .forms import field_errors

__all__ = ["add_routes"]

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


@page()
async def grant_list(request: web.Request) -> web.StreamResponse:
    query = {k: v for k, v in request.query.items() if k in ("subject", "role", "cursor") and v}
    listing = await request.app[BRIDGE].call(request, grants.index, {**query, "limit": "100"})
    return render(request, "grants.html", {"title": "Grants", "grants": listing["items"], "next": listing["next"],
                                           "query": query, "values": {}, "errors": {}})


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
                                               "query": {}, "values": values, "errors": field_errors(exc, values)},
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
    query = {"limit": "100", **({"cursor": request.query["cursor"]} if request.query.get("cursor") else {})}
    listing = await request.app[BRIDGE].call(request, subscriptions.list_subscriptions, query)
    return render(request, "subscriptions.html", {"title": "Subscriptions", "subscriptions": listing["items"],
                                                  "next": listing["next"]})


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
    app.router.add_get("/ui/admin/grants", grant_list, name="ui.admin_grants")
    app.router.add_post("/ui/admin/grants", create_grant, name="ui.admin_grant_create")
    app.router.add_post("/ui/admin/grants/{id:\\d+}/delete", delete_grant, name="ui.admin_grant_delete")
    app.router.add_get("/ui/admin/audit", audit_log, name="ui.admin_audit")
    app.router.add_post("/ui/admin/audit/verify", verify_audit, name="ui.admin_audit_verify")
    app.router.add_get("/ui/admin/subscriptions", subscription_list, name="ui.admin_subscriptions")
    app.router.add_get("/ui/admin/subscriptions/{id}", subscription, name="ui.admin_subscription")
    app.router.add_post("/ui/admin/subscriptions/{id}/deliveries/{delivery}/retry", retry_delivery,
                        name="ui.admin_delivery_retry")
