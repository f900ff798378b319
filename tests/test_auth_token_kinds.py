"""Token kinds stay apart: a registry token from ``/token`` is good for ``/v2`` within its
scope and for nothing under ``/api/v1``; API tokens are made with a password or an API
token; an empty-scope registry token grants nothing; token listings stay one's own."""

from __future__ import annotations

import re
import uuid

import pytest

from proxy.api.manage.router import PREFIX, Access, ApiRouter
from tests.support.auth import ADMIN, AuthEnv, auth_env, basic, bearer, seed_image  # noqa: F401

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def _management_routes(app) -> list[tuple[str, str]]:
    """Every (method, concrete path) the app serves under /api/v1, from its router."""
    found = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path") or ""
        if not template.startswith(PREFIX) or route.method == "HEAD":
            continue
        path = _PARAM.sub(lambda m: "1" if m.group(1) in ("id", "delivery") else "generic/x", template)
        found.append((route.method, path))
    return found


async def test_a_registry_token_opens_no_management_route(auth_env: AuthEnv):
    client, app = auth_env.client, auth_env.app
    repo = f"generic/k{uuid.uuid4().hex[:8]}"
    await seed_image(app, repo, "v1")
    scoped = (await auth_env.registry_token(basic(ADMIN), f"repository:{repo}:pull,push,delete",
                                            "registry:catalog:*"))["token"]
    empty = (await auth_env.registry_token(basic(ADMIN)))["token"]
    before = await (await client.get("/api/v1/tokens", headers=basic(ADMIN))).json()
    routes = _management_routes(app)
    assert len(routes) > 30 and ("POST", "/api/v1/tokens") in routes
    for token in (scoped, empty):
        for method, path in routes:
            resp = await client.request(method, path, json={"name": "x", "owner": ADMIN}, headers=bearer(token))
            assert resp.status in (401, 403), (method, path, resp.status, await resp.text())
    # Nothing was made with them, and the same token still works on /v2 within its scope.
    after = await (await client.get("/api/v1/tokens", headers=basic(ADMIN))).json()
    assert after == before
    assert (await client.get(f"/v2/{repo}/manifests/v1", headers=bearer(scoped))).status == 200


def test_every_management_route_declares_its_access():
    from proxy.app import create_app  # noqa: F401  (imports every router)
    from proxy.api.manage import archive, assemblies, audit, chains, fullbuilds, grants, openapi, plugins
    from proxy.api.manage import subscriptions, tokens, users, whoami
    modules = (archive, assemblies, audit, chains, fullbuilds, grants, plugins, subscriptions, tokens, users, whoami)
    routers: list[ApiRouter] = [m.router for m in modules] + [openapi.openapi_router]
    for router in routers:
        for route in router.routes:
            assert isinstance(route.action, Access), route.name
    with pytest.raises(TypeError):
        ApiRouter("x").route("GET", "/x", summary="no access declared")  # type: ignore[call-arg]


async def test_an_empty_scope_registry_token_grants_nothing(auth_env: AuthEnv):
    client = auth_env.client
    repo = f"generic/k{uuid.uuid4().hex[:8]}"
    await seed_image(auth_env.app, repo, "v1")
    token = (await auth_env.registry_token(basic(ADMIN)))["token"]
    assert (await client.get("/v2/", headers=bearer(token))).status == 200  # the login probe only
    for path in (f"/v2/{repo}/manifests/v1", f"/v2/{repo}/tags/list", "/v2/_catalog"):
        assert (await client.get(path, headers=bearer(token))).status == 401, path
    assert (await client.delete(f"/v2/{repo}/manifests/v1", headers=bearer(token))).status == 401


async def test_api_tokens_are_made_with_a_password_or_an_api_token(auth_env: AuthEnv):
    client = auth_env.client
    resp = await client.post("/api/v1/tokens", json={"name": "by-password"}, headers=basic("biz"))
    assert resp.status == 201, await resp.text()
    first = await resp.json()
    for headers in (bearer(first["token"]), basic("biz", first["token"])):
        resp = await client.post("/api/v1/tokens", json={"name": "by-token"}, headers=headers)
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["owner"] == "biz"
    registry = (await auth_env.registry_token(basic("biz"), "repository:plugins/x:pull"))["token"]
    resp = await client.post("/api/v1/tokens", json={"name": "by-registry-token"}, headers=bearer(registry))
    assert resp.status == 401
    assert "valid only for /v2" in (await resp.json())["error"]["message"]
    assert (await client.post("/api/v1/tokens", json={"name": "anon", "owner": "biz"})).status == 401


async def test_token_listing_is_your_own_unless_admin(auth_env: AuthEnv):
    client = auth_env.client
    for user in ("biz", "cons"):
        assert (await client.post("/api/v1/tokens", json={"name": user}, headers=basic(user))).status == 201
    own = await (await client.get("/api/v1/tokens", headers=basic("cons"))).json()
    assert {t["owner"] for t in own["items"]} == {"cons"}
    assert (await client.get("/api/v1/tokens", params={"owner": "biz"}, headers=basic("cons"))).status == 403
    everyone = await (await client.get("/api/v1/tokens", headers=basic(ADMIN))).json()
    assert {"biz", "cons"} <= {t["owner"] for t in everyone["items"]}
    assert (await client.get("/api/v1/tokens")).status == 401
