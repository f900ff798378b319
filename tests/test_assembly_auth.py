"""Assembly with authentication on: who may publish plugins, manage chains and see jobs."""

from __future__ import annotations

import base64
import json

import pytest

from proxy.oci import mediatypes as mt
from tests.support.auth import ADMIN, auth_env, basic  # noqa: F401 - auth_env is a fixture
from tests.support.oci import digest_of
from tests.support.packer import wait_for


@pytest.fixture
def backend_kind() -> str:
    return "filesystem"


async def _push_generic(client, repo: str, tag: str, user: str) -> str:
    config = json.dumps({"name": "face-recog", "version": tag}).encode()
    layer = b"weights"
    for blob in (config, layer):
        resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob,
                                 headers=basic(user))
        assert resp.status == 201, await resp.text()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.ALGORITHM_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": digest_of(layer), "size": len(layer),
                    "annotations": {mt.ANNOTATION_TITLE: "model.onnx"}}],
    })
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=manifest,
                            headers={"Content-Type": mt.OCI_MANIFEST, **basic(user)})
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"]


async def test_business_developer_runs_assembly_without_admin_rights(auth_env):
    client = auth_env.client
    plugin = {"name": "door-form", "version": "1.0", "kind": "file",
              "files": [{"path": "form.json", "data": base64.b64encode(b"{}").decode()}]}
    chain = {"name": "door", "match": ["generic/*"], "plugins": ["plugins/door-form:1.0"]}

    assert (await client.post("/api/v1/plugins", json=plugin)).status == 401
    assert (await client.post("/api/v1/plugins", json=plugin, headers=basic("cons"))).status == 403
    resp = await client.post("/api/v1/plugins", json=plugin, headers=basic("biz"))
    assert resp.status == 201, await resp.text()

    assert (await client.post("/api/v1/chains", json=chain, headers=basic("alg"))).status == 403
    # A chain reads what it matches: biz must be able to pull generic/* itself first.
    resp = await client.post("/api/v1/chains", json=chain, headers=basic("biz"))
    assert resp.status == 403 and (await resp.json())["error"]["detail"]["glob"] == "generic/*"
    resp = await client.post("/api/v1/grants", json={"subject": "biz", "role": "consumer", "pattern": "generic/**"},
                             headers=basic("admin"))
    assert resp.status == 201, await resp.text()
    resp = await client.post("/api/v1/chains", json=chain, headers=basic("biz"))
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["owner"] == {"name": "biz", "kind": "user"}
    assert (await client.post("/api/v1/chains/reload", headers=basic("biz"))).status == 403  # registry-wide

    source = await _push_generic(client, "generic/face-recog", "1.0", "alg")

    async def assembled():
        resp = await client.get("/api/v1/assemblies", headers=basic("biz"))
        items = (await resp.json())["items"]
        return items if items and items[0]["status"] == "succeeded" else None

    [job] = await wait_for(assembled)
    # biz was granted pull on generic/** to create the chain, so it sees the job's source.
    assert job["source"]["digest"] == source
    full = await (await client.get(f"/api/v1/assemblies/{job['id']}", headers=basic(ADMIN))).json()
    assert full["source"]["digest"] == source
    # algomint wrote into business/**, where no user may push; a consumer pulls the result.
    resp = await client.get("/v2/business/door/face-recog/manifests/1.0",
                            headers={"Accept": mt.OCI_MANIFEST, **basic("cons")})
    assert resp.status == 200 and resp.headers["Docker-Content-Digest"] == job["target"]["digest"]
    # Jobs are shown to whoever may pull their business repository.
    assert (await (await client.get("/api/v1/assemblies", headers=basic("cons"))).json())["items"]
    assert (await client.get(f"/api/v1/assemblies/{job['id']}", headers=basic("alg"))).status == 403
    assert (await client.get("/api/v1/subscriptions", headers=basic("biz"))).status == 403
