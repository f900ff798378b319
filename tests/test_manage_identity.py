"""The identity resources of the management API: users, robots, tokens, grants, whoami;
validation and the one error shape; the OpenAPI document (valid, covering every route)."""

from __future__ import annotations

import re

import pytest

from proxy.api.manage.openapi import OPENAPI
from tests.support.auth import ADMIN, AuthEnv, auth_env, basic, bearer  # noqa: F401


@pytest.fixture
def backend_kind() -> str:
    """The management API stores nothing in the registry backend: the embedded one will do."""
    return "filesystem"


async def test_users_lifecycle(auth_env: AuthEnv):
    client = auth_env.client
    resp = await client.post("/api/v1/users", json={
        "name": "dana", "password": "dana-password-1", "roles": ["algorithm-dev", "consumer"],
        "description": "face team"}, headers=basic(ADMIN))
    assert resp.status == 201
    user = await resp.json()
    assert user["kind"] == "user" and user["has_password"] and "password" not in user
    assert sorted((g["role"], g["pattern"]) for g in user["grants"]) == [
        ("algorithm-dev", "generic/**"), ("algorithm-dev", "images/**"), ("consumer", "business/**")]
    resp = await client.get("/api/v1/users/dana", headers=basic("dana", "dana-password-1"))  # yourself
    assert resp.status == 200
    assert (await client.get("/api/v1/users/alg", headers=basic("dana", "dana-password-1"))).status == 403
    # pages
    names: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/v1/users", params=params, headers=basic(ADMIN))).json()
        names += [u["name"] for u in page["items"]]
        cursor = page["next"]
        if not cursor:
            break
    assert names == sorted(names) and {"admin", "alg", "biz", "cons", "dana"} <= set(names)
    # own password change needs the current one
    resp = await client.put("/api/v1/users/dana/password", json={"password": "dana-password-2"},
                            headers=basic("dana", "dana-password-1"))
    assert resp.status == 403
    resp = await client.put("/api/v1/users/dana/password",
                            json={"password": "dana-password-2", "current_password": "dana-password-1"},
                            headers=basic("dana", "dana-password-1"))
    assert resp.status == 204
    assert (await client.get("/api/v1/whoami", headers=basic("dana", "dana-password-1"))).status == 401
    assert (await client.get("/api/v1/whoami", headers=basic("dana", "dana-password-2"))).status == 200
    resp = await client.patch("/api/v1/users/dana", json={"disabled": True, "description": "left"},
                              headers=basic(ADMIN))
    assert (await resp.json())["disabled"] is True
    assert (await client.delete("/api/v1/users/dana", headers=basic(ADMIN))).status == 204
    assert (await client.get("/api/v1/users/dana", headers=basic(ADMIN))).status == 404


@pytest.mark.parametrize("body, field", [
    ({"name": "Bad Name", "password": "long-enough-password"}, "name"),
    ({"name": "anonymous", "password": "long-enough-password"}, "name"),
    ({"name": "shorty", "password": "short"}, "password"),
    ({"name": "nopass"}, "(body)"),
    ({"name": "bot", "kind": "robot", "password": "long-enough-password"}, "(body)"),
    ({"name": "roles", "password": "long-enough-password", "roles": ["superuser"]}, "roles.0"),
    ({"name": "extra", "password": "long-enough-password", "kind": "alien"}, "kind"),
])
async def test_user_validation(auth_env: AuthEnv, body: dict, field: str):
    resp = await auth_env.client.post("/api/v1/users", json=body, headers=basic(ADMIN))
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "validation_failed"
    assert field in [f["field"] for f in error["detail"]["fields"]]
    assert "long-enough-password" not in str(error)


async def test_conflicts_and_the_last_admin(auth_env: AuthEnv):
    client = auth_env.client
    resp = await client.post("/api/v1/users", json={"name": "alg", "password": "whatever-password"},
                             headers=basic(ADMIN))
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "conflict"
    assert (await client.delete(f"/api/v1/users/{ADMIN}", headers=basic(ADMIN))).status == 409  # yourself
    # root2 is the other admin; with it gone, admin is the last one and can't be disabled or lose the grant
    assert (await client.delete("/api/v1/users/root2", headers=basic(ADMIN))).status == 204
    resp = await client.patch(f"/api/v1/users/{ADMIN}", json={"disabled": True}, headers=basic(ADMIN))
    assert resp.status == 409
    grants = await (await client.get("/api/v1/grants", params={"subject": ADMIN}, headers=basic(ADMIN))).json()
    resp = await client.delete(f"/api/v1/grants/{grants['items'][0]['id']}", headers=basic(ADMIN))
    assert resp.status == 409 and "no enabled admin" in (await resp.json())["error"]["message"]


async def test_robots_and_tokens(auth_env: AuthEnv):
    client = auth_env.client
    resp = await client.post("/api/v1/users", json={"name": "ci-bot", "kind": "robot", "roles": ["algorithm-dev"]},
                             headers=basic(ADMIN))
    assert resp.status == 201 and (await resp.json())["has_password"] is False
    # robots can't log in with a password at all
    assert (await client.get("/v2/", headers=basic("ci-bot", ""))).status == 401
    resp = await client.post("/api/v1/tokens", json={"name": "pipeline", "owner": "ci-bot", "expires_in": 3600},
                             headers=basic(ADMIN))
    assert resp.status == 201 and resp.headers["Cache-Control"] == "no-store"
    created = await resp.json()
    assert re.fullmatch(r"amt_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", created["token"])
    assert created["token"].startswith(f"amt_{created['id']}_") and created["state"] == "active"
    me = await (await client.get("/api/v1/whoami", headers=bearer(created["token"]))).json()
    assert me == {**me, "name": "ci-bot", "kind": "robot", "method": "api_token", "token_id": created["id"],
                  "roles": ["algorithm-dev"], "authenticated": True}
    # the secret never shows again
    shown = await (await client.get(f"/api/v1/tokens/{created['id']}", headers=basic(ADMIN))).json()
    assert "token" not in shown and created["token"] not in str(shown)
    listed = await (await client.get("/api/v1/tokens", params={"owner": "ci-bot"}, headers=basic(ADMIN))).json()
    assert [t["id"] for t in listed["items"]] == [created["id"]] and created["token"] not in str(listed)
    # the robot manages its own tokens, no one else's
    own = await (await client.get("/api/v1/tokens", headers=bearer(created["token"]))).json()
    assert [t["owner"] for t in own["items"]] == ["ci-bot"]
    assert (await client.get("/api/v1/tokens", params={"owner": "alg"}, headers=bearer(created["token"]))).status == 403
    resp = await client.post("/api/v1/tokens", json={"name": "x", "owner": "alg"}, headers=bearer(created["token"]))
    assert resp.status == 403
    # a user creates their own, can't see others'
    mine = await (await client.post("/api/v1/tokens", json={"name": "laptop"}, headers=basic("alg"))).json()
    assert mine["owner"] == "alg" and mine["created_by"] == "alg"
    assert (await client.get(f"/api/v1/tokens/{mine['id']}", headers=bearer(created["token"]))).status == 404
    assert (await client.delete(f"/api/v1/tokens/{mine['id']}", headers=bearer(created["token"]))).status == 404
    assert (await client.delete(f"/api/v1/tokens/{mine['id']}", headers=basic("alg"))).status == 204
    again = await (await client.get(f"/api/v1/tokens/{mine['id']}", headers=basic("alg"))).json()
    assert again["state"] == "revoked" and again["revoked_at"]
    # lifetimes are bounded
    resp = await client.post("/api/v1/tokens", json={"name": "forever", "expires_in": 10**9}, headers=basic("alg"))
    assert resp.status == 422
    assert (await client.post("/api/v1/tokens", json={"name": "anon"})).status == 401


async def test_grants_and_roles(auth_env: AuthEnv):
    client = auth_env.client
    roles = await (await client.get("/api/v1/roles", headers=basic("cons"))).json()
    assert {r["name"]: r["defaults"] for r in roles} == {
        "admin": ["**"], "algorithm-dev": ["generic/**", "images/**"],
        "business-dev": ["plugins/**", "business/**"], "consumer": ["business/**"]}
    resp = await client.post("/api/v1/grants", json={"subject": "cons", "role": "consumer", "pattern": "generic/*"},
                             headers=basic(ADMIN))
    assert resp.status == 201
    grant = await resp.json()
    assert grant["created_by"] == ADMIN
    resp = await client.post("/api/v1/grants", json={"subject": "cons", "role": "consumer", "pattern": "generic/*"},
                             headers=basic(ADMIN))
    assert resp.status == 409
    for body in ({"subject": "cons", "role": "god", "pattern": "**"},
                 {"subject": "cons", "role": "consumer", "pattern": "generic/***"},
                 {"subject": "cons", "role": "consumer", "pattern": "/abs"}):
        assert (await client.post("/api/v1/grants", json=body, headers=basic(ADMIN))).status == 422
    resp = await client.post("/api/v1/grants", json={"subject": "ghost", "role": "consumer", "pattern": "x/**"},
                             headers=basic(ADMIN))
    assert resp.status == 404
    assert (await client.get(f"/api/v1/grants/{grant['id']}", headers=basic(ADMIN))).status == 200
    assert (await client.delete(f"/api/v1/grants/{grant['id']}", headers=basic(ADMIN))).status == 204
    assert (await client.get(f"/api/v1/grants/{grant['id']}", headers=basic(ADMIN))).status == 404
    assert (await client.post("/api/v1/grants", json={}, headers=basic("biz"))).status == 403


async def test_management_errors_have_one_shape(auth_env: AuthEnv):
    client = auth_env.client
    for method, path, kwargs, status in (
        ("post", "/api/v1/users", {"data": b"{not json", "headers": {**basic(ADMIN), "Content-Type": "application/json"}}, 400),
        ("get", "/api/v1/users/nobody", {"headers": basic(ADMIN)}, 404),
        ("get", "/api/v1/users", {}, 401),
        ("get", "/api/v1/nothing-here", {"headers": basic(ADMIN)}, 404),
    ):
        resp = await getattr(client, method)(path, **kwargs)
        assert resp.status == status
        body = await resp.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])


async def test_a_cursor_of_another_listing_is_refused(auth_env: AuthEnv):
    import base64

    client = auth_env.client
    page = await (await client.get("/api/v1/users", params={"limit": "1"}, headers=basic(ADMIN))).json()
    cursor = page["next"]
    assert cursor and "admin" not in base64.urlsafe_b64decode(cursor + "==").decode("latin-1")
    # Another listing's cursor, a readable one made by hand, and a tampered one are all refused.
    plain = base64.urlsafe_b64encode(b'"admin"').decode().rstrip("=")
    tampered = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    for path, value in (("tokens", cursor), ("grants", cursor), ("audit", cursor), ("full-builds", cursor),
                        ("users", plain), ("users", tampered)):
        resp = await client.get(f"/api/v1/{path}", params={"cursor": value}, headers=basic(ADMIN))
        assert resp.status == 400, path
        assert (await resp.json())["error"]["message"] == "invalid cursor"
    resp = await client.get("/api/v1/users", params={"cursor": cursor}, headers=basic(ADMIN))
    assert resp.status == 200


async def test_whoami_anonymous(auth_env: AuthEnv):
    me = await (await auth_env.client.get("/api/v1/whoami")).json()
    assert me["authenticated"] is False and me["name"] == "anonymous" and me["auth_enabled"] is True


async def test_openapi_document_is_valid_and_covers_every_route(auth_env: AuthEnv):
    from openapi_spec_validator import validate

    resp = await auth_env.client.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    validate(doc)
    assert doc == auth_env.app[OPENAPI]
    served = set()
    for route in auth_env.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith("/api/v1/") and route.method != "HEAD":
            served.add((route.method.lower(), re.sub(r"\{(\w+)(?::[^}]*)?\}", r"{\1}", path)))
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    for path in ("/api/v1/users", "/api/v1/users/{user}", "/api/v1/tokens/{id}", "/api/v1/grants",
                 "/api/v1/audit", "/api/v1/audit/verify", "/api/v1/whoami", "/api/v1/roles"):
        assert path in doc["paths"], path
    created = doc["paths"]["/api/v1/users"]["post"]
    assert created["responses"]["201"]["content"]["application/json"]["schema"]
    assert created["requestBody"]["content"]["application/json"]["schema"]
