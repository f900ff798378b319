"""Manifests, tags, catalog and referrers through /v2, on both backends."""

from __future__ import annotations

import json

from proxy.oci import mediatypes as mt
from tests.support.oci import descriptor, digest_of, error_code, image_manifest, push_blob, push_image


async def test_put_get_exact_bytes(client, repo):
    digest, manifest = await push_image(client, repo, "v1", [b"layer-one", b"layer-two"])
    assert digest == digest_of(manifest)
    for ref in ("v1", digest):
        resp = await client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": mt.OCI_MANIFEST})
        assert resp.status == 200
        assert await resp.read() == manifest
        assert resp.headers["Content-Type"] == mt.OCI_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == digest
        head = await client.head(f"/v2/{repo}/manifests/{ref}")
        assert head.status == 200 and int(head.headers["Content-Length"]) == len(manifest)


async def test_accept_negotiation(client, repo):
    await push_image(client, repo, "v1", [b"l"])
    resp = await client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": mt.DOCKER_MANIFEST})
    assert resp.status == 404 and await error_code(resp) == "MANIFEST_UNKNOWN"
    resp = await client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": f"{mt.DOCKER_MANIFEST}, {mt.OCI_MANIFEST}"})
    assert resp.status == 200


async def test_docker_schema2_and_index(client, repo):
    config, layer = b'{"os":"linux"}', b"docker-layer"
    await push_blob(client, repo, config)
    await push_blob(client, repo, layer)
    docker = json.dumps({
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": descriptor(config, mt.DOCKER_CONFIG),
        "layers": [descriptor(layer, mt.DOCKER_LAYER_GZIP)],
    }).encode()
    resp = await client.put(f"/v2/{repo}/manifests/docker", data=docker, headers={"Content-Type": mt.DOCKER_MANIFEST})
    assert resp.status == 201, await resp.text()
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [descriptor(docker, mt.DOCKER_MANIFEST, platform={"os": "linux", "architecture": "amd64"})],
    }).encode()
    resp = await client.put(f"/v2/{repo}/manifests/multi", data=index, headers={"Content-Type": mt.OCI_INDEX})
    assert resp.status == 201, await resp.text()
    got = await client.get(f"/v2/{repo}/manifests/multi", headers={"Accept": mt.OCI_INDEX})
    assert await got.read() == index


async def test_manifest_validation_errors(client, repo):
    put = lambda ref, body, ct=mt.OCI_MANIFEST: client.put(  # noqa: E731
        f"/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": ct}
    )
    resp = await put("v1", b"{not json")
    assert resp.status == 400 and await error_code(resp) == "MANIFEST_INVALID"
    resp = await put("v1", image_manifest(b"cfg", [b"layer"]))
    assert resp.status == 400 and await error_code(resp) == "MANIFEST_BLOB_UNKNOWN"
    await push_blob(client, repo, b"cfg")
    await push_blob(client, repo, b"layer")
    resp = await put("v1", image_manifest(b"cfg", [b"layer"]), ct=mt.OCI_INDEX)
    assert resp.status == 400 and await error_code(resp) == "MANIFEST_INVALID"
    resp = await put("v1", json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode(), ct="text/plain")
    assert resp.status == 400 and await error_code(resp) == "MANIFEST_INVALID"
    resp = await put("bad tag!", image_manifest(b"cfg", [b"layer"]))
    assert resp.status in (400, 404)
    resp = await put("v1", b" " * (4 * 1024 * 1024 + 1))
    assert resp.status == 413
    resp = await put(digest_of(b"other"), image_manifest(b"cfg", [b"layer"]))
    assert resp.status == 400 and await error_code(resp) == "DIGEST_INVALID"
    # Nothing was stored by any of the failures above.
    resp = await client.get(f"/v2/{repo}/manifests/v1")
    assert resp.status == 404


async def test_delete_manifest(client, repo):
    digest, _ = await push_image(client, repo, "v1", [b"x"])
    assert (await client.delete(f"/v2/{repo}/manifests/{digest}")).status == 202
    resp = await client.get(f"/v2/{repo}/manifests/{digest}")
    assert resp.status == 404 and await error_code(resp) == "MANIFEST_UNKNOWN"
    assert (await client.get(f"/v2/{repo}/manifests/v1")).status == 404


async def test_tags_pagination(client, repo):
    tags = [f"t{i:02d}" for i in range(7)]
    for tag in tags:
        await push_image(client, repo, tag, [b"same"])
    resp = await client.get(f"/v2/{repo}/tags/list")
    assert (await resp.json())["tags"] == tags
    collected, url = [], f"/v2/{repo}/tags/list?n=3"
    while url:
        resp = await client.get(url)
        body = await resp.json()
        collected += body["tags"]
        link = resp.headers.get("Link")
        url = link[1 : link.index(">")] if link else None
    assert collected == tags
    resp = await client.get(f"/v2/{repo}/tags/list", params={"n": "2", "last": "t03"})
    assert (await resp.json())["tags"] == ["t04", "t05"]
    resp = await client.get(f"/v2/{repo}/tags/list", params={"n": "-1"})
    assert resp.status == 400


async def test_unknown_repository_tags(client, repo):
    resp = await client.get(f"/v2/{repo}/tags/list")
    assert resp.status == 404 and await error_code(resp) == "NAME_UNKNOWN"


async def test_catalog(client, repo):
    await push_image(client, repo + "/a", "v1", [b"x"])
    await push_image(client, repo + "/b", "v1", [b"x"])
    resp = await client.get("/v2/_catalog")
    names = (await resp.json())["repositories"]
    assert repo + "/a" in names and repo + "/b" in names
    resp = await client.get("/v2/_catalog", params={"n": "1"})
    assert len((await resp.json())["repositories"]) == 1 and "Link" in resp.headers


async def test_referrers(client, repo):
    subject_digest, subject = await push_image(client, repo, "v1", [b"base"])
    subject_desc = descriptor(subject, mt.OCI_MANIFEST)
    await push_blob(client, repo, b"{}")
    refs = {}
    for kind in ("application/vnd.example.sbom", "application/vnd.example.sig"):
        body = json.dumps({
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": kind,
            "config": descriptor(b"{}", mt.OCI_EMPTY),
            "layers": [descriptor(b"{}", mt.OCI_EMPTY)],
            "subject": subject_desc,
            "annotations": {"kind": kind},
        }).encode()
        resp = await client.put(f"/v2/{repo}/manifests/{digest_of(body)}", data=body, headers={"Content-Type": mt.OCI_MANIFEST})
        assert resp.status == 201, await resp.text()
        assert resp.headers["OCI-Subject"] == subject_digest
        refs[kind] = digest_of(body)
    resp = await client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith(mt.OCI_INDEX)
    listed = {m["digest"]: m for m in (await resp.json())["manifests"]}
    assert set(listed) == set(refs.values())
    assert listed[refs["application/vnd.example.sbom"]]["annotations"] == {"kind": "application/vnd.example.sbom"}
    resp = await client.get(f"/v2/{repo}/referrers/{subject_digest}", params={"artifactType": "application/vnd.example.sig"})
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in (await resp.json())["manifests"]] == [refs["application/vnd.example.sig"]]
    # Deleting a referrer removes it from the list.
    await client.delete(f"/v2/{repo}/manifests/{refs['application/vnd.example.sig']}")
    resp = await client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert [m["digest"] for m in (await resp.json())["manifests"]] == [refs["application/vnd.example.sbom"]]


async def test_referrers_merge_fallback_tag_pushed_to_backend(aiohttp_client, tmp_path, distribution, repo):
    """A client that used the spec's fallback tag schema straight against the backend."""
    import aiohttp

    from proxy.app import create_app
    from tests.conftest import make_config

    client = await aiohttp_client(create_app(make_config(tmp_path, "registry", distribution)))
    subject_digest, subject = await push_image(client, repo, "v1", [b"base"])
    await push_blob(client, repo, b"{}")
    referrer = json.dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.example.direct",
        "config": descriptor(b"{}", mt.OCI_EMPTY),
        "layers": [descriptor(b"{}", mt.OCI_EMPTY)],
        "subject": descriptor(subject, mt.OCI_MANIFEST),
    }).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [descriptor(referrer, mt.OCI_MANIFEST, artifactType="application/vnd.example.direct")],
    }).encode()
    async with aiohttp.ClientSession() as direct:
        for ref, body, media_type in ((digest_of(referrer), referrer, mt.OCI_MANIFEST),
                                      (subject_digest.replace(":", "-"), index, mt.OCI_INDEX)):
            resp = await direct.put(f"{distribution.url}/v2/{repo}/manifests/{ref}", data=body,
                                    headers={"Content-Type": media_type})
            assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/{repo}/referrers/{subject_digest}")
    listed = (await resp.json())["manifests"]
    assert [m["digest"] for m in listed] == [digest_of(referrer)]
    assert listed[0]["artifactType"] == "application/vnd.example.direct"
