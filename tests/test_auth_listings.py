"""Listings follow permissions, empty or not, and their cursors reveal nothing: anonymous
callers get 401, each caller sees only what it may pull, and a ``next`` cursor is sealed
(unreadable, bound to its listing) and only offered when another visible item exists."""

from __future__ import annotations

import base64
import json
import uuid

from proxy.oci import mediatypes as mt
from tests.support.auth import ADMIN, AuthEnv, auth_env, basic  # noqa: F401 - auth_env is a fixture
from tests.support.oci import digest_of
from tests.support.packer import wait_for

LISTINGS = ("/api/v1/chains", "/api/v1/plugins", "/api/v1/assemblies")


def _readable(cursor: str) -> str:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("latin-1")


async def _push_plugin(env: AuthEnv, name: str) -> None:
    plugin = {"name": name, "version": "1.0", "kind": "file",
              "files": [{"path": "form.json", "data": base64.b64encode(b"{}").decode()}]}
    resp = await env.client.post("/api/v1/plugins", json=plugin, headers=basic("biz"))
    assert resp.status == 201, await resp.text()


async def _push_generic(env: AuthEnv, repo: str, tag: str) -> str:
    client = env.client
    config = json.dumps({"name": repo.rsplit("/", 1)[-1], "version": tag}).encode()
    layer = b"weights" + repo.encode()
    for blob in (config, layer):
        resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob,
                                 headers=basic("alg"))
        assert resp.status == 201, await resp.text()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.ALGORITHM_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": digest_of(layer), "size": len(layer),
                    "annotations": {mt.ANNOTATION_TITLE: "model.onnx"}}],
    })
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=manifest,
                            headers={"Content-Type": mt.OCI_MANIFEST, **basic("alg")})
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"]


async def test_anonymous_callers_get_401_on_listings_empty_or_not(auth_env: AuthEnv):
    client = auth_env.client
    for path in LISTINGS:
        assert (await client.get(path)).status == 401, path  # empty
    plugin = f"p{uuid.uuid4().hex[:6]}"
    await _push_plugin(auth_env, plugin)
    resp = await client.post("/api/v1/chains", headers=basic(ADMIN),
                             json={"name": "door", "match": ["generic/none-*"], "plugins": [f"plugins/{plugin}:1.0"]})
    assert resp.status == 201, await resp.text()
    for path in LISTINGS:
        assert (await client.get(path)).status == 401, path  # with content
        assert (await client.get(path, headers=basic("cons"))).status == 200, path


async def test_plugin_cursor_reveals_no_hidden_name(auth_env: AuthEnv):
    client = auth_env.client
    names = sorted(f"secret-{uuid.uuid4().hex[:6]}" for _ in range(3))
    for name in names:
        await _push_plugin(auth_env, name)
    # cons holds no grant on plugins/**: nothing listed, and no cursor to decode.
    page = await (await client.get("/api/v1/plugins", params={"limit": "1"}, headers=basic("cons"))).json()
    assert page == {"items": [], "next": None}
    # biz sees them one page at a time; the cursor names nothing.
    seen, cursor = [], None
    while True:
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/v1/plugins", params=params, headers=basic("biz"))).json()
        seen += [item["name"] for item in page["items"]]
        cursor = page["next"]
        if not cursor:
            break
        assert not any(n in _readable(cursor) for n in names) and "plugins/" not in _readable(cursor)
        # Someone else holding it learns nothing either: cons gets an empty page.
        other = await (await client.get("/api/v1/plugins", params={"cursor": cursor}, headers=basic("cons"))).json()
        assert other["items"] == []
    assert [n for n in seen if n in names] == names
    forged = base64.urlsafe_b64encode(json.dumps(names[0]).encode()).decode().rstrip("=")
    resp = await client.get("/api/v1/plugins", params={"cursor": forged}, headers=basic("biz"))
    assert resp.status == 400


async def test_assemblies_hide_sources_the_caller_cannot_pull(auth_env: AuthEnv):
    client = auth_env.client
    plugin = f"door-{uuid.uuid4().hex[:6]}"
    await _push_plugin(auth_env, plugin)
    chain = {"name": "door", "match": ["generic/secret-*"], "plugins": [f"plugins/{plugin}:1.0"]}
    resp = await client.post("/api/v1/chains", json=chain, headers=basic(ADMIN))
    assert resp.status == 201, await resp.text()
    source_repo = f"generic/secret-{uuid.uuid4().hex[:6]}"
    source = await _push_generic(auth_env, source_repo, "1.0")

    async def done():
        items = (await (await client.get("/api/v1/assemblies", headers=basic(ADMIN))).json())["items"]
        return items if items and items[0]["status"] == "succeeded" else None

    [job] = await wait_for(done)
    assert job["source"]["repository"] == source_repo
    for user in ("cons", "biz"):
        listed = await (await client.get("/api/v1/assemblies", headers=basic(user))).json()
        one = await (await client.get(f"/api/v1/assemblies/{job['id']}", headers=basic(user))).json()
        for shown in (listed["items"][0], one):
            text = json.dumps(shown)
            assert shown["source"] is None and source_repo not in text and source not in text, user
            assert shown["target"]["repository"] == job["target"]["repository"]
        assert one["logs"] is None
        # Filtering by a repository one cannot pull is no way round it.
        resp = await client.get("/api/v1/assemblies", params={"repository": source_repo}, headers=basic(user))
        assert resp.status == 403
    # cons may not pull plugins/**; biz may, and sees the plugin run.
    assert (await (await client.get(f"/api/v1/assemblies/{job['id']}", headers=basic("cons"))).json())["plugins"] == []
    # alg may pull generic/** but not the business package: the job is not listed at all.
    listed = await (await client.get("/api/v1/assemblies", headers=basic("alg"))).json()
    assert listed == {"items": [], "next": None}
    # chains: the file status (path, load errors) is for admins only
    chains = await (await client.get("/api/v1/chains", headers=basic("cons"))).json()
    assert chains["file"] is None and [c["name"] for c in chains["items"]] == ["door"]
    assert (await (await client.get("/api/v1/chains", headers=basic("alg"))).json())["items"] == []
