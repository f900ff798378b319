"""The permission matrix through real HTTP: every role (and a robot, and anonymous) ×
namespace × action, on both backends, with Basic credentials and with registry tokens."""

from __future__ import annotations

import uuid

import pytest
from aiohttp import web

from proxy.api.manage import authorize
from proxy.app import create_app
from proxy.service.policy import Action
from tests.support.auth import ADMIN, ROLE_USERS, AuthEnv, auth_config, basic, bearer, seed_image
from tests.support.oci import digest_of

NAMESPACES = ("generic", "images", "plugins", "business", "misc")
ACTIONS = ("pull", "push", "delete", "manage")
ALL = {"pull", "push", "delete", "manage"}

# The expected outcome, written out by hand from the role definitions (not computed).
# business/** is written by algomint only: nobody, admins included, pushes there.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "admin": {"generic": ALL, "images": ALL, "plugins": ALL, "business": ALL - {"push"}, "misc": ALL},
    "root2": {"generic": ALL, "images": ALL, "plugins": ALL, "business": ALL - {"push"}, "misc": ALL},
    "alg": {"generic": {"pull", "push", "delete"}, "images": {"pull", "push", "delete"}},
    "robot": {"generic": {"pull", "push", "delete"}, "images": {"pull", "push", "delete"}},
    "biz": {"plugins": ALL, "business": {"pull", "delete", "manage"}},
    "cons": {"business": {"pull"}},
    "anonymous": {},
}
ALLOWED_STATUS = {"pull": 200, "push": 201, "delete": 202, "manage": 204}
REGISTRY_WIDE_MANAGERS = {"admin", "root2"}


def _registry_code(body: dict) -> str:
    """The registry error code, from the OCI body (/v2) or the management shape (/api)."""
    return body["errors"][0]["code"] if "errors" in body else body["error"]["detail"]["registry_code"]


async def _manage_probe(request: web.Request) -> web.Response:
    # A management route acting on a repository named in the path, the way chain and
    # full-build routes ask: through the same policy.
    await authorize(request, Action.MANAGE, request.match_info["repo"])
    return web.Response(status=204)


@pytest.fixture
async def matrix_env(aiohttp_client, tmp_path, backend_kind, request) -> AuthEnv:
    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    app = create_app(auth_config(tmp_path, backend_kind, dist))
    app.router.add_post("/api/v1/test-manage/{repo:.+}", _manage_probe)
    env = AuthEnv(await aiohttp_client(app), app)
    for role, name in ROLE_USERS.items():
        await env.create_user(name, [role])
    await env.create_user("robot", ["algorithm-dev"], kind="robot")
    return env


async def _credentials(env: AuthEnv, who: str, mode: str, repo: str) -> dict[str, str]:
    robot_token = None
    if who == "robot":
        robot_token = (await env.api_token("robot"))["token"]
    if mode == "basic":
        if who == "anonymous":
            return {}
        return basic("robot", robot_token) if robot_token else basic(who)
    # bearer: the token service, asked for everything; it grants what is held
    creds = {} if who == "anonymous" else (basic("robot", robot_token) if robot_token else basic(who))
    token = await env.registry_token(creds, f"repository:{repo}:pull,push,delete")
    return bearer(token["token"])


async def _attempt(env: AuthEnv, action: str, repo: str, who: str, headers: dict[str, str], digest: str):
    client = env.client
    if action == "pull":
        return await client.get(f"/v2/{repo}/manifests/base", headers=headers)
    if action == "push":
        blob = f"pushed by {who} to {repo}".encode()
        return await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob,
                                 headers=headers)
    if action == "delete":
        return await client.delete(f"/v2/{repo}/manifests/{digest}", headers=headers)
    return await client.post(f"/api/v1/test-manage/{repo}", headers=headers)


@pytest.mark.parametrize("mode", ["basic", "bearer"])
async def test_permission_matrix(matrix_env: AuthEnv, mode: str):
    env = matrix_env
    uid = uuid.uuid4().hex[:8]
    repos = {ns: f"{ns}/matrix-{uid}" for ns in NAMESPACES}
    for repo in repos.values():
        await seed_image(env.app, repo, "base")
    failures = []
    for who, allowed_by_ns in EXPECTED.items():
        for ns, repo in repos.items():
            digest = await seed_image(env.app, repo, f"del-{who}", payload=f"for {who}".encode())
            headers = await _credentials(env, who, mode, repo)
            allowed = allowed_by_ns.get(ns, set())
            for action in ACTIONS:
                resp = await _attempt(env, action, repo, who, headers, digest)
                body = await resp.json(content_type=None) if resp.status >= 400 else None
                if action == "manage" and mode == "bearer":
                    # registry tokens are for /v2 only: refused as credentials on the management API
                    expected = 401
                elif action in allowed:
                    # a plugin version is never deleted, whoever may delete there (immutable tags)
                    expected = 403 if (action, ns) == ("delete", "plugins") else ALLOWED_STATUS[action]
                else:
                    expected = 401 if who == "anonymous" else 403
                if resp.status != expected:
                    failures.append(f"{who} {action} {repo} ({mode}): {resp.status}, expected {expected}: {body}")
                    continue
                if expected == 401:
                    challenge = resp.headers.get("WWW-Authenticate", "")
                    assert challenge.startswith('Bearer realm="http://') and 'service="algomint"' in challenge
                    assert _registry_code(body) == "UNAUTHORIZED"
                    if action != "manage":
                        assert f'scope="repository:{repo}:' in challenge
                elif expected == 403:
                    assert _registry_code(body) == "DENIED", body
                    if action != "manage":  # /v2 refusals name the scope (RFC 6750 §3.1)
                        assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("who", [ADMIN, "root2", "alg", "biz", "cons", "robot", "anonymous"])
async def test_registry_wide_management(matrix_env: AuthEnv, who: str):
    """The management API itself (user administration) is for admins (role admin on **)."""
    env = matrix_env
    if who == "robot":
        headers = basic("robot", (await env.api_token("robot"))["token"])
    else:
        headers = {} if who == "anonymous" else basic(who)
    resp = await env.client.get("/api/v1/users", headers=headers)
    expected = 200 if who in REGISTRY_WIDE_MANAGERS else (401 if who == "anonymous" else 403)
    assert resp.status == expected, await resp.text()
    if expected != 200:
        body = await resp.json()
        assert body["error"]["code"] == ("unauthorized" if expected == 401 else "forbidden")
    if expected == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer realm=")
    # The catalog is registry-wide too.
    resp = await env.client.get("/v2/_catalog", headers=headers)
    assert resp.status == (200 if who in REGISTRY_WIDE_MANAGERS else expected)


async def test_denied_mutations_are_audited(matrix_env: AuthEnv):
    env = matrix_env
    repo = f"business/audit-{uuid.uuid4().hex[:8]}"
    blob = b"not allowed"
    resp = await env.client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob,
                                 headers=basic("cons"))
    assert resp.status == 403
    records = await env.audit(actor="cons", action="blob.push")
    assert records and records[0]["outcome"] == "denied" and records[0]["status"] == 403
    assert records[0]["repository"] == repo
