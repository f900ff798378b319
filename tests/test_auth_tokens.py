"""The registry token flow and credential handling through real HTTP: challenges,
down-scoping, expiry, forgery, revocation, refresh, bad input and rate limits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from proxy.audit import AuditQuery
from proxy.audit.middleware import AUDIT
from proxy.auth import passwords as passwords_module
from proxy.auth.keyring import KeyRing
from proxy.auth.registry_token import TokenSigner
from proxy.auth.state import SIGNER
from proxy.app import create_app
from tests.support.auth import ADMIN, AuthEnv, auth_config, auth_env, basic, bearer, password_of, seed_image  # noqa: F401
from tests.support.oci import digest_of



@pytest.fixture
def backend_kind() -> str:
    """Token handling doesn't depend on storage: the embedded backend is enough here
    (the permission matrix and the client tests run on both)."""
    return "filesystem"


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def access(token: str) -> dict[str, list[str]]:
    return {f"{a['type']}:{a['name']}": a["actions"] for a in claims(token)["access"]}


def _repo(ns: str) -> str:
    return f"{ns}/t{uuid.uuid4().hex[:10]}"


async def test_challenge_token_and_retry(auth_env: AuthEnv):
    client = auth_env.client
    resp = await client.get("/v2/")
    assert resp.status == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge == f'Bearer realm="http://127.0.0.1:{client.server.port}/token",service="algomint"'
    body = await auth_env.registry_token(basic("alg"))
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    issued = time.mktime(time.strptime(body["issued_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(issued - time.time()) < 60
    token_claims = claims(body["token"])
    assert token_claims["sub"] == "alg" and token_claims["aud"] == "algomint" and token_claims["iss"] == "algomint"
    assert token_claims["exp"] - token_claims["iat"] == 300 and token_claims["jti"]
    resp = await client.get("/v2/", headers=bearer(body["token"]))
    assert resp.status == 200


async def test_challenge_names_the_scope_and_public_url(aiohttp_client, tmp_path):
    app = create_app(auth_config(tmp_path, "filesystem", server__public_url="https://registry.example.com/"))
    client = await aiohttp_client(app)
    resp = await client.put("/v2/generic/face/manifests/v1", data=b"{}")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == (
        'Bearer realm="https://registry.example.com/token",service="algomint",'
        'scope="repository:generic/face:pull,push"'
    )
    resp = await client.get("/v2/_catalog")
    assert 'scope="registry:catalog:*"' in resp.headers["WWW-Authenticate"]


async def test_down_scoping_grants_only_what_is_held(auth_env: AuthEnv):
    generic, business, images = _repo("generic"), _repo("business"), _repo("images")
    body = await auth_env.registry_token(
        basic("alg"),
        f"repository:{generic}:pull,push,delete",
        f"repository:{business}:pull,push",
        f"repository:{images}:* registry:catalog:*",  # several scopes in one parameter
        "repository:NOT_A_NAME:pull",
        "garbage",
    )
    assert access(body["token"]) == {
        f"repository:{generic}": ["pull", "push", "delete"],
        f"repository:{images}": ["pull", "push", "delete"],
    }
    assert body["scope"] == f"repository:{generic}:pull,push,delete repository:{images}:pull,push,delete"
    # An admin may read the catalog and business, but not push into business/**.
    body = await auth_env.registry_token(basic(ADMIN), f"repository:{business}:pull,push,delete", "registry:catalog:*")
    assert access(body["token"]) == {f"repository:{business}": ["pull", "delete"], "registry:catalog": ["*"]}
    # A consumer asking for a push gets the pull it holds, not an error.
    body = await auth_env.registry_token(basic("cons"), f"repository:{business}:pull,push")
    assert access(body["token"]) == {f"repository:{business}": ["pull"]}


async def test_token_for_another_scope_asks_for_a_new_one(auth_env: AuthEnv):
    mine, other = _repo("generic"), _repo("generic")
    await seed_image(auth_env.app, other, "v1")
    token = (await auth_env.registry_token(basic("alg"), f"repository:{mine}:pull"))["token"]
    resp = await auth_env.client.get(f"/v2/{other}/manifests/v1", headers=bearer(token))
    assert resp.status == 401
    assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    challenge = resp.headers["WWW-Authenticate"]
    assert f'scope="repository:{other}:pull"' in challenge and 'error="insufficient_scope"' in challenge
    # push on the repository the token names, but with a pull-only token: same answer
    resp = await auth_env.client.post(f"/v2/{mine}/blobs/uploads/", headers=bearer(token))
    assert resp.status == 401 and 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize("case", ["expired", "other-service", "other-key", "other-key-our-kid", "hs256-public-key",
                                  "tampered", "alg-none", "refresh-as-access", "garbage"])
async def test_unusable_bearer_tokens_are_refused(auth_env: AuthEnv, case: str, tmp_path):
    repo = _repo("generic")
    await seed_image(auth_env.app, repo, "v1")
    signer = auth_env.app[SIGNER]
    grant = [{"type": "repository", "name": repo, "actions": ["pull"]}]
    good, _ = signer.issue("alg", "user", use="access", ttl=300, access=grant)
    if case == "expired":
        token, _ = signer.issue("alg", "user", use="access", ttl=300, access=grant, now=time.time() - 301)
    elif case == "other-service":
        token, _ = TokenSigner(signer.keys, "another-registry").issue("alg", "user", use="access", ttl=300, access=grant)
    elif case == "other-key":
        token, _ = TokenSigner(KeyRing.open(tmp_path / "other"), "algomint").issue("alg", "user", use="access", ttl=300,
                                                                                    access=grant)
    elif case == "other-key-our-kid":  # a key of one's own, passed off under our key's id
        other = KeyRing.open(tmp_path / "other").signer()
        token = pyjwt.encode(claims(good), other.private, algorithm="ES256", headers={"kid": signer.keys.signer().kid})
    elif case == "hs256-public-key":  # algorithm confusion: HMAC keyed with the (public) verification key
        header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signer.keys.signer().kid})
                                          .encode()).decode().rstrip("=")
        payload = good.split(".")[1]
        public = signer.keys.signer().public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        mac = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        token = f"{header}.{payload}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"
    elif case == "tampered":
        header, payload, signature = good.split(".")
        forged = claims(good) | {"sub": ADMIN}
        payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
        token = f"{header}.{payload}.{signature}"
    elif case == "alg-none":
        header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
        token = f"{header}.{good.split('.')[1]}."
    elif case == "refresh-as-access":
        token, _ = signer.issue("alg", "user", use="refresh", ttl=300)
    else:
        token = "not-a-token"
    resp = await auth_env.client.get(f"/v2/{repo}/manifests/v1", headers=bearer(token))
    assert resp.status == 401
    assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert (await auth_env.client.get(f"/v2/{repo}/manifests/v1", headers=bearer(good))).status == 200
    records = await auth_env.audit(action="login", outcome="denied")
    assert records[0]["detail"]["reason"].startswith("bearer token:")
    assert token not in json.dumps(records)


async def test_revoked_api_token_and_its_bearer_tokens_stop_at_once(auth_env: AuthEnv):
    repo = _repo("generic")
    await seed_image(auth_env.app, repo, "v1")
    api = await auth_env.api_token("alg")
    via_token = (await auth_env.registry_token(basic("alg", api["token"]), f"repository:{repo}:pull"))["token"]
    assert claims(via_token)["tid"] == api["id"]
    client = auth_env.client
    assert (await client.get(f"/v2/{repo}/manifests/v1", headers=bearer(via_token))).status == 200
    assert (await client.get(f"/v2/{repo}/manifests/v1", headers=bearer(api["token"]))).status == 200
    assert (await client.get(f"/v2/{repo}/manifests/v1", headers=basic("alg", api["token"]))).status == 200
    resp = await client.delete(f"/api/v1/tokens/{api['id']}", headers=basic(ADMIN))
    assert resp.status == 204
    for headers in (bearer(via_token), bearer(api["token"]), basic("alg", api["token"])):
        resp = await client.get(f"/v2/{repo}/manifests/v1", headers=headers)
        assert resp.status == 401, headers
    resp = await client.get("/token", params={"scope": f"repository:{repo}:pull"}, headers=basic("alg", api["token"]))
    assert resp.status == 401
    reasons = {r["detail"]["reason"] for r in await auth_env.audit(action="login", outcome="denied")}
    assert {"bearer token: api token no longer active", "api token revoked"} <= reasons


async def test_disabled_user_stops_at_once(auth_env: AuthEnv):
    repo = _repo("generic")
    await seed_image(auth_env.app, repo, "v1")
    client = auth_env.client
    token = (await auth_env.registry_token(basic("alg"), f"repository:{repo}:pull"))["token"]
    assert (await client.get(f"/v2/{repo}/manifests/v1", headers=bearer(token))).status == 200
    resp = await client.patch("/api/v1/users/alg", json={"disabled": True}, headers=basic(ADMIN))
    assert resp.status == 200 and (await resp.json())["disabled"] is True
    assert (await client.get(f"/v2/{repo}/manifests/v1", headers=bearer(token))).status == 401
    assert (await client.get(f"/v2/{repo}/manifests/v1", headers=basic("alg"))).status == 401
    assert (await client.get("/token", headers=basic("alg"))).status == 401
    resp = await client.patch("/api/v1/users/alg", json={"disabled": False}, headers=basic(ADMIN))
    assert (await client.get(f"/v2/{repo}/manifests/v1", headers=bearer(token))).status == 200


async def test_removed_grant_stops_a_live_token(auth_env: AuthEnv):
    repo = _repo("business")
    await seed_image(auth_env.app, repo, "v1")
    token = (await auth_env.registry_token(basic("cons"), f"repository:{repo}:pull"))["token"]
    assert (await auth_env.client.get(f"/v2/{repo}/manifests/v1", headers=bearer(token))).status == 200
    grants = await (await auth_env.client.get("/api/v1/grants", params={"subject": "cons"}, headers=basic(ADMIN))).json()
    for grant in grants["items"]:
        assert (await auth_env.client.delete(f"/api/v1/grants/{grant['id']}", headers=basic(ADMIN))).status == 204
    resp = await auth_env.client.get(f"/v2/{repo}/manifests/v1", headers=bearer(token))
    assert resp.status == 403 and (await resp.json())["errors"][0]["code"] == "DENIED"


async def test_oauth2_password_and_refresh_grants(auth_env: AuthEnv):
    client = auth_env.client
    repo = _repo("generic")
    form = {"grant_type": "password", "service": "algomint", "client_id": "test", "access_type": "offline",
            "username": "alg", "password": password_of("alg"), "scope": f"repository:{repo}:pull,push"}
    resp = await client.post("/token", data=form)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert resp.headers["Cache-Control"] == "no-store"
    assert body["access_token"] == body["token"] and access(body["access_token"]) == {
        f"repository:{repo}": ["pull", "push"]}
    refresh = body["refresh_token"]
    resp = await client.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh,
                                             "service": "algomint", "scope": f"repository:{repo}:pull"})
    assert resp.status == 200
    renewed = await resp.json()
    assert access(renewed["access_token"]) == {f"repository:{repo}": ["pull"]}
    assert renewed["refresh_token"] == refresh
    # A refresh token is not a bearer token for the registry.
    assert (await client.get("/v2/", headers=bearer(refresh))).status == 401
    # GET with offline_token=true returns one too.
    body = await auth_env.registry_token(basic("alg"), offline_token="true")
    assert "refresh_token" in body
    # A password change ends refresh tokens obtained with the old password.
    resp = await client.put("/api/v1/users/alg/password", json={"password": "a-brand-new-password"},
                            headers=basic(ADMIN))
    assert resp.status == 204
    resp = await client.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh})
    assert resp.status == 401 and (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"


async def test_oauth2_form_errors(auth_env: AuthEnv):
    client = auth_env.client
    for form, code in (
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": "password", "username": "alg"}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({}, "unsupported_grant_type"),
    ):
        resp = await client.post("/token", data=form)
        assert resp.status == 400
        assert (await resp.json())["error"] == code
    resp = await client.post("/token", data=b"x" * (70 * 1024), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400
    resp = await client.post("/token", data={"grant_type": "password", "username": "alg", "password": "wrong"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="algomint"'
    resp = await client.get("/token", params={"service": "someone-else"}, headers=basic("alg"))
    assert resp.status == 403 and (await resp.json())["errors"][0]["code"] == "DENIED"


BAD_PASSWORD = "definitely-wrong-password"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("header, reason", [
    (f"Basic {_b64('alg:' + BAD_PASSWORD)}", "wrong password"),
    (f"Basic {_b64('nobody-here:' + BAD_PASSWORD)}", "unknown user"),
    ("Basic !!!not-base64!!!", "malformed basic credentials"),
    (f"Basic {_b64('no-colon-at-all')}", "malformed basic credentials"),
    (f"Basic {_b64('alg:' + 'p' * 2000)}", "oversized or empty credentials"),
    ("Basic " + "A" * 5000, "oversized authorization header"),
    ("Digest username=alg", "malformed authorization header"),
    ("Bearer", "malformed authorization header"),
    ("Bearer a.b", "bearer token: not a compact JWS"),
    (f"Bearer amt_0123456789ab_{'x' * 43}", "unknown api token"),
    ("Bearer amt_short", "malformed api token"),
])
@pytest.mark.parametrize("path", ["/v2/", "/api/v1/whoami"])
async def test_bad_credentials_get_401_and_an_audit_record(auth_env: AuthEnv, header: str, reason: str, path: str,
                                                           caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    resp = await auth_env.client.get(path, headers={"Authorization": header})
    assert resp.status == 401, await resp.text()
    body = await resp.json()
    code = body["errors"][0]["code"] if path.startswith("/v2") else body["error"]["code"]
    assert code in ("UNAUTHORIZED", "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer realm=")
    records = await auth_env.audit(action="login", outcome="denied")
    if path.startswith("/api/") and reason.startswith("bearer token:"):
        reason = "registry token presented to the management API"  # never even verified there
    assert records[0]["detail"]["reason"] == reason
    assert records[0]["status"] == 401 and records[0]["client"] == "127.0.0.1"
    text = json.dumps(records) + caplog.text + json.dumps(body)
    assert BAD_PASSWORD not in text and "A" * 100 not in text and "p" * 100 not in text


async def test_api_token_with_another_users_name_is_refused(auth_env: AuthEnv):
    api = await auth_env.api_token("alg")
    resp = await auth_env.client.get("/v2/", headers=basic("cons", api["token"]))
    assert resp.status == 401
    records = await auth_env.audit(action="login", outcome="denied")
    assert records[0]["detail"]["reason"] == "api token belongs to another user"
    assert api["token"] not in json.dumps(records)
    api_secret_tail = api["token"][-20:]
    assert api_secret_tail not in json.dumps(await auth_env.audit())


async def test_unknown_users_cost_a_full_password_check(auth_env: AuthEnv, monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[str, str | None]] = []
    real = passwords_module.verify_password

    def spy(password: str, encoded: str | None) -> bool:
        calls.append((password, encoded))
        return real(password, encoded)

    monkeypatch.setattr(passwords_module, "verify_password", spy)
    resp = await auth_env.client.get("/v2/", headers=basic("nobody-at-all", "whatever-password"))
    assert resp.status == 401
    assert calls == [("whatever-password", None)]  # scrypt ran on a dummy: same cost as a real user


async def test_basic_logins_are_recorded_once_not_per_request(auth_env: AuthEnv):
    for _ in range(3):
        assert (await auth_env.client.get("/v2/", headers=basic("cons"))).status == 200
    records = await auth_env.audit(actor="cons", action="login")
    assert len(records) == 1 and records[0]["outcome"] == "success" and records[0]["detail"] == {"method": "basic"}


async def test_failed_logins_slow_down_but_never_stop_valid_credentials(aiohttp_client, tmp_path):
    """An attacker's failures from the same address as everyone else (loopback here, a TLS
    proxy in production) never refuse a valid password or a valid API token."""
    app = create_app(auth_config(tmp_path, "filesystem", auth__free_failures=3, auth__failure_delay=0.01,
                                 auth__max_failure_delay=0.05))
    env = AuthEnv(await aiohttp_client(app), app)
    client = env.client
    await env.create_user("victim", ["consumer"])
    await env.create_user("other", ["consumer"])
    api = await env.api_token("other")
    for i in range(60):  # made-up names, then the victim's own
        name = f"nobody{i}" if i < 50 else "victim"
        assert (await client.get("/v2/", headers=basic(name, "guess"))).status == 401
    # The victim's right password is held its turn, then let in; so are everyone else's.
    assert (await client.get("/v2/", headers=basic("victim"))).status == 200
    assert (await client.get("/v2/", headers=basic("other"))).status == 200
    assert (await client.get("/token", params={"service": "algomint"}, headers=basic("victim"))).status == 200
    for headers in (bearer(api["token"]), basic("other", api["token"])):
        assert (await client.get("/v2/", headers=headers)).status == 200
        assert (await client.get("/api/v1/whoami", headers=headers)).status == 200
    # A flood of concurrent guesses for one pair: a few wait their turn, the rest get 429.
    for _ in range(5):
        assert (await client.get("/v2/", headers=basic("victim", "guess"))).status == 401
    statuses = await asyncio.gather(*(client.get("/v2/", headers=basic("victim", "guess")) for _ in range(12)))
    assert {r.status for r in statuses} == {401, 429}
    refused = next(r for r in statuses if r.status == 429)
    assert (await refused.json())["errors"][0]["code"] == "TOOMANYREQUESTS" and int(refused.headers["Retry-After"]) >= 1
    records, _ = await app[AUDIT].query(AuditQuery(action="login", outcome="denied"), 100)
    assert {"reason": "too many failed logins", "method": "basic"} in [r.detail for r in records if r.status == 429]
    # Valid API tokens are not even asked to wait.
    assert (await client.get("/v2/", headers=bearer(api["token"]))).status == 200


async def test_anonymous_pull_patterns(aiohttp_client, tmp_path):
    app = create_app(auth_config(tmp_path, "filesystem", auth__anonymous_pull=["public/**"]))
    env = AuthEnv(await aiohttp_client(app), app)
    await seed_image(app, "public/tools", "v1")
    await seed_image(app, "generic/secret", "v1")
    client = env.client
    assert (await client.get("/v2/public/tools/manifests/v1")).status == 200
    resp = await client.get("/v2/generic/secret/manifests/v1")
    assert resp.status == 401 and 'scope="repository:generic/secret:pull"' in resp.headers["WWW-Authenticate"]
    resp = await client.post("/v2/public/tools/blobs/uploads/")
    assert resp.status == 401
    # /v2/ still challenges anonymous clients, so `login` with bad credentials never "succeeds".
    assert (await client.get("/v2/")).status == 401
    # An anonymous token carries the public pull and nothing else.
    body = await env.registry_token({}, "repository:public/tools:pull,push", "repository:generic/secret:pull")
    assert access(body["token"]) == {"repository:public/tools": ["pull"]}
    assert "refresh_token" not in body
    assert (await client.get("/v2/public/tools/manifests/v1", headers=bearer(body["token"]))).status == 200
    assert (await client.get("/v2/generic/secret/manifests/v1", headers=bearer(body["token"]))).status == 401


async def test_mounting_needs_pull_on_the_source(auth_env: AuthEnv):
    client = auth_env.client
    source = _repo("generic")
    blob = b"shared layer " + uuid.uuid4().bytes
    digest = digest_of(blob)
    resp = await client.post(f"/v2/{source}/blobs/uploads/", params={"digest": digest}, data=blob, headers=basic("alg"))
    assert resp.status == 201
    # biz may push plugins/** but not read generic/**: the mount falls back to an upload session.
    resp = await client.post(f"/v2/{_repo('plugins')}/blobs/uploads/", params={"mount": digest, "from": source},
                             headers=basic("biz"))
    assert resp.status == 202
    resp = await client.post(f"/v2/{_repo('images')}/blobs/uploads/", params={"mount": digest, "from": source},
                             headers=basic("alg"))
    assert resp.status == 201


async def test_registry_tokens_do_not_grant_management(auth_env: AuthEnv):
    token = (await auth_env.registry_token(basic(ADMIN), "registry:catalog:*"))["token"]
    resp = await auth_env.client.get("/api/v1/users", headers=bearer(token))
    assert resp.status == 401  # refused as credentials: registry tokens are for /v2 only
    assert (await auth_env.client.get("/v2/_catalog", headers=bearer(token))).status == 200


async def test_a_password_checked_moments_ago_skips_the_throttle_and_guesses_do_not(aiohttp_client, tmp_path):
    """Basic on every request: once the password is checked, later requests ask the store
    nothing about failed logins (a round trip each on PostgreSQL). Wrong passwords for
    the same pair still wait their turn and count, and the right one is never held."""
    from proxy.api.state import DATABASE

    app = create_app(auth_config(tmp_path, "filesystem", auth__free_failures=1, auth__failure_delay=0.3,
                                 auth__max_failure_delay=0.3))
    env = AuthEnv(await aiohttp_client(app), app)
    client = env.client
    await env.create_user("steady", ["consumer"])
    assert (await client.get("/v2/", headers=basic("steady"))).status == 200  # checked once
    db = app[DATABASE]
    asked: list[str] = []
    fetchone = db.fetchone

    async def counted(sql, *args, **kwargs):
        if "login_failures" in sql:
            asked.append(sql)
        return await fetchone(sql, *args, **kwargs)

    db.fetchone = counted
    for _ in range(3):
        assert (await client.get("/v2/", headers=basic("steady"))).status == 200
    assert asked == []
    for _ in range(3):
        assert (await client.get("/v2/", headers=basic("steady", "guess"))).status == 401
    assert asked  # every guess went through the throttle
    started = time.monotonic()
    guesses = [asyncio.ensure_future(client.get("/v2/", headers=basic("steady", "guess"))) for _ in range(2)]
    assert (await client.get("/v2/", headers=basic("steady"))).status == 200
    assert time.monotonic() - started < 0.3  # not held behind the guesses' turns
    assert {r.status for r in await asyncio.gather(*guesses)} <= {401, 429}
    row = await fetchone("SELECT SUM(failures) AS n FROM login_failures WHERE name = ?", ("steady",))
    assert row["n"] >= 3
