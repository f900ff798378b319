"""Input a client may send that must never reach a 5xx: deep or huge JSON, out-of-range
numbers, nulls, invalid path names, undeclared methods; on both backends, over real HTTP."""

from __future__ import annotations


import pytest

from tests.support.auth import auth_env  # noqa: F401 - fixture
from tests.support.oci import digest_of

DEEP = b"[" * 50_000 + b"]" * 50_000
BIG_INT = b'{"url": "http://127.0.0.1:9/hook", "events": ["*"], "n": ' + b"9" * 5000 + b"}"

# Every management route with a JSON body, and a body that is otherwise plausible.
BODY_ROUTES = [
    ("POST", "/api/v1/users"),
    ("POST", "/api/v1/tokens"),
    ("POST", "/api/v1/chains"),
    ("PUT", "/api/v1/chains/somechain"),
    ("POST", "/api/v1/subscriptions"),
    ("POST", "/api/v1/plugins"),
    ("POST", "/api/v1/full-builds"),
]


async def _subscription(client) -> dict:
    resp = await client.post("/api/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
    assert resp.status == 201, await resp.text()
    return await resp.json()


def _fields(body: dict) -> list[str]:
    return [f["field"] for f in body["error"]["detail"]["fields"]]


async def test_patch_subscription_repositories(client):
    sub = await _subscription(client)
    resp = await client.patch(f"/api/v1/subscriptions/{sub['id']}", json={"repositories": ["generic/face-*"]})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["repositories"] == ["generic/face-*"]
    resp = await client.patch(f"/api/v1/subscriptions/{sub['id']}", json={"repositories": ["Not A Glob"]})
    assert resp.status == 422 and _fields(await resp.json()) == ["repositories"]


@pytest.mark.parametrize("field", ["active", "url", "events", "repositories", "description"])
async def test_patch_subscription_null_is_refused(client, field):
    sub = await _subscription(client)
    resp = await client.patch(f"/api/v1/subscriptions/{sub['id']}", json={field: None})
    assert resp.status == 422, await resp.text()
    assert _fields(await resp.json()) == [field]
    after = await (await client.get(f"/api/v1/subscriptions/{sub['id']}")).json()
    assert after == {k: v for k, v in sub.items() if k != "secret"}  # nothing changed


@pytest.mark.parametrize("name,body,field", [
    ("ABC", {"match": ["generic/*"], "plugins": ["plugins/p:1.0"]}, "name"),
    ("ok-name", {"match": [""], "plugins": ["plugins/p:1.0"]}, "match"),
])
async def test_put_chain_invalid_is_422(client, name, body, field):
    resp = await client.put(f"/api/v1/chains/{name}", json=body)
    assert resp.status == 422, await resp.text()
    assert field in _fields(await resp.json())[0]


@pytest.mark.parametrize("method,path", BODY_ROUTES)
async def test_deep_json_is_400(client, method, path):
    resp = await client.request(method, path, data=DEEP, headers={"Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    assert body["error"]["code"] == "invalid_request" and "nested" in body["error"]["detail"]["reason"]


@pytest.mark.parametrize("method,path", BODY_ROUTES)
async def test_huge_integer_is_400(client, method, path):
    resp = await client.request(method, path, data=BIG_INT, headers={"Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert "integer" in (await resp.json())["error"]["detail"]["reason"]


async def test_oversized_body_is_413(client):
    resp = await client.post("/api/v1/subscriptions", data=b" " * (1024 * 1024 + 1),
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413


@pytest.mark.parametrize("value", [b"[NaN]", b'{"a": 1e999}', b'{"a": -Infinity}'])
async def test_non_json_numbers_are_400(client, value):
    resp = await client.post("/api/v1/chains", data=value, headers={"Content-Type": "application/json"})
    assert resp.status == 400


async def test_deep_cursor_is_400(client):
    import base64

    cursor = base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode().rstrip("=")
    resp = await client.get("/api/v1/subscriptions", params={"cursor": cursor})
    assert resp.status == 400


@pytest.mark.parametrize("path,value", [
    ("/api/v1/full-builds", b"[{}, []]"),
    ("/api/v1/full-builds", b'["x", 1]'),
    ("/api/v1/assemblies", b'"text"'),
    ("/api/v1/subscriptions", b"17"),
    ("/api/v1/catalog", b"[]"),
])
async def test_cursor_of_the_wrong_shape_is_400(client, path, value):
    import base64

    cursor = base64.urlsafe_b64encode(value).decode().rstrip("=")
    resp = await client.get(path, params={"cursor": cursor})
    assert resp.status == 400, await resp.text()


@pytest.mark.parametrize("path", ["/api/v1/assemblies/%C2%B2", "/api/v1/subscriptions?limit=%C2%B2",
                                  "/v2/_catalog?n=%C2%B2", "/api/v1/catalog?limit=%D9%A3"])
async def test_non_ascii_digits_are_refused(client, path):
    resp = await client.get(path)
    assert 400 <= resp.status < 500, await resp.text()


async def test_deep_manifest_is_manifest_invalid(client, repo):
    deep = b'{"schemaVersion": 2, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    resp = await client.put(f"/v2/{repo}/manifests/v1", data=deep,
                            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert resp.status == 400, await resp.text()
    assert [e["code"] for e in (await resp.json())["errors"]] == ["MANIFEST_INVALID"]
    resp = await client.get(f"/v2/{repo}/manifests/{digest_of(deep)}")
    assert resp.status == 404  # nothing stored


async def test_undeclared_method_is_405_with_allow(client):
    resp = await client.request("TRACE", "/api/v1/subscriptions")
    assert resp.status == 405
    assert set(resp.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    resp = await client.request("TRACE", "/v2/")
    assert resp.status == 405 and "GET" in resp.headers["Allow"]
    assert (await resp.json())["errors"][0]["code"] == "UNSUPPORTED"


async def test_deep_json_in_a_bearer_token_is_401(auth_env):
    import base64

    header = base64.urlsafe_b64encode(b"[" * 1500 + b"]" * 1500).decode().rstrip("=")  # 4000 chars: under the cap
    resp = await auth_env.client.get("/v2/", headers={"Authorization": f"Bearer {header}.e30.c2ln"})
    assert resp.status == 401, await resp.text()
