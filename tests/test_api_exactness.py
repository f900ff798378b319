"""Registry exactness findings (issue 18: 3–9, 12), each on both backends where it applies."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from proxy.oci import mediatypes as mt
from tests.support.oci import descriptor, digest_of, error_code, push_blob, push_image


def sha512_of(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


# -- 3: referrers Content-Type ----------------------------------------------------------
async def test_referrers_content_type_is_exact(client, repo):
    subject_digest, _ = await push_image(client, repo, "v1", [b"base"])
    resp = await client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == mt.OCI_INDEX


# -- 4: out-of-order chunk ----------------------------------------------------------------
async def test_out_of_order_chunk_answers_416_with_session_state(client, repo):
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    resp = await client.patch(resp.headers["Location"], data=b"abcd", headers={"Content-Range": "0-3"})
    assert resp.status == 202
    location = resp.headers["Location"]
    resp = await client.patch(location, data=b"xyz", headers={"Content-Range": "9-11", "Content-Length": "3"})
    assert resp.status == 416
    assert await error_code(resp) == "RANGE_INVALID"
    assert resp.headers["Range"] == "0-3"
    assert f"/v2/{repo}/blobs/uploads/" in resp.headers["Location"]
    # The session is intact: the client resumes from the Location it was given.
    resp = await client.patch(resp.headers["Location"], data=b"efg", headers={"Content-Range": "4-6"})
    assert resp.status == 202 and resp.headers["Range"] == "0-6"
    resp = await client.put(resp.headers["Location"], params={"digest": digest_of(b"abcdefg")})
    assert resp.status == 201


# -- 5: non-distributable layers ---------------------------------------------------------
@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ],
)
async def test_non_distributable_layers_need_no_blob(client, repo, media_type):
    config = b'{"architecture":"amd64","os":"linux"}'
    await push_blob(client, repo, config)
    foreign = os.urandom(64)  # never pushed: it lives at the URL
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": descriptor(config, mt.OCI_CONFIG),
        "layers": [descriptor(foreign, media_type, urls=["https://example.invalid/layer"])],
    }).encode()
    resp = await client.put(f"/v2/{repo}/manifests/v1", data=manifest, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": mt.OCI_MANIFEST})
    assert await resp.read() == manifest


async def test_missing_distributable_layer_still_refused(client, repo):
    config = b'{"architecture":"amd64","os":"linux"}'
    await push_blob(client, repo, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": descriptor(config, mt.OCI_CONFIG),
        # A urls field does not excuse an ordinary layer.
        "layers": [descriptor(b"absent", mt.OCI_LAYER_GZIP, urls=["https://example.invalid/layer"])],
    }).encode()
    resp = await client.put(f"/v2/{repo}/manifests/v1", data=manifest, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 400 and await error_code(resp) == "MANIFEST_BLOB_UNKNOWN"


# -- 7: tags/list after the last tag is deleted ------------------------------------------
async def test_tags_list_empty_after_last_tag_deleted(client, repo, backend_kind):
    digest, _ = await push_image(client, repo, "v1", [b"layer"])
    resp = await client.delete(f"/v2/{repo}/manifests/v1")
    if backend_kind == "registry":
        # docker-registry 2.8 cannot untag; the manifest stays and so does the tag.
        assert resp.status == 405 and await error_code(resp) == "UNSUPPORTED"
        return
    assert resp.status == 202
    resp = await client.get(f"/v2/{repo}/tags/list")
    assert resp.status == 200
    assert await resp.json() == {"name": repo, "tags": []}
    assert (await client.head(f"/v2/{repo}/manifests/{digest}")).status == 200


async def test_repository_stays_known_after_its_last_manifest_is_deleted(client, repo):
    digest, _ = await push_image(client, repo, "v1", [b"layer"])
    assert (await client.delete(f"/v2/{repo}/manifests/{digest}")).status == 202
    resp = await client.get(f"/v2/{repo}/tags/list")
    assert resp.status == 200 and await resp.json() == {"name": repo, "tags": []}
    resp = await client.get("/v2/_catalog")
    assert repo in (await resp.json())["repositories"]


# -- 8: GET/HEAD by a reference that is not a valid tag -----------------------------------
@pytest.mark.parametrize("reference", [".INVALID_MANIFEST_NAME", "-x", "a" * 129])
async def test_invalid_tag_reads_as_unknown_manifest(client, repo, reference):
    await push_image(client, repo, "v1", [b"layer"])
    resp = await client.get(f"/v2/{repo}/manifests/{reference}")
    assert resp.status == 404 and await error_code(resp) == "MANIFEST_UNKNOWN"
    resp = await client.head(f"/v2/{repo}/manifests/{reference}")
    assert resp.status == 404
    resp = await client.delete(f"/v2/{repo}/manifests/{reference}")
    assert resp.status == 404 and await error_code(resp) == "MANIFEST_UNKNOWN"


async def test_put_with_invalid_tag_is_tag_invalid(client, repo):
    config = b"{}"
    await push_blob(client, repo, config)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": descriptor(config, mt.OCI_EMPTY), "layers": [],
    }).encode()
    resp = await client.put(f"/v2/{repo}/manifests/.bad", data=body, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 400 and await error_code(resp) == "TAG_INVALID"


# -- 9: Range headers that are not one satisfiable byte range -------------------------------
@pytest.mark.parametrize("header", ["bytes=abc", "bytes=", "items=0-1", "bytes 0-1", "bytes=0-1,5-6", "bytes=-1,0-0"])
async def test_unusable_range_is_ignored(client, repo, header):
    data = os.urandom(1000)
    digest = await push_blob(client, repo, data)
    resp = await client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert resp.status == 200
    assert "Content-Range" not in resp.headers
    assert await resp.read() == data


# -- 6: sha512 digests ---------------------------------------------------------------------
async def _sha512_push_modes(client, repo, data: bytes, mount_falls_back: bool = False) -> str:
    """Push ``data`` by every upload mode under its sha512 digest; returns the digest."""
    digest = sha512_of(data)
    # monolithic POST ?digest=
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=data)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    # chunked PATCH with Content-Range, then PUT
    other = f"{repo}-chunked"
    resp = await client.post(f"/v2/{other}/blobs/uploads/")
    half = len(data) // 2
    resp = await client.patch(resp.headers["Location"], data=data[:half], headers={"Content-Range": f"0-{half - 1}"})
    assert resp.status == 202
    resp = await client.patch(resp.headers["Location"], data=data[half:],
                              headers={"Content-Range": f"{half}-{len(data) - 1}"})
    resp = await client.put(resp.headers["Location"], params={"digest": digest})
    assert resp.status == 201, await resp.text()
    # streamed PATCH without Content-Range, then PUT
    streamed = f"{repo}-streamed"
    resp = await client.post(f"/v2/{streamed}/blobs/uploads/")
    resp = await client.patch(resp.headers["Location"], data=data)
    resp = await client.put(resp.headers["Location"], params={"digest": digest})
    assert resp.status == 201, await resp.text()
    # mount
    resp = await client.post(f"/v2/{repo}-mounted/blobs/uploads/", params={"mount": digest, "from": repo})
    if mount_falls_back:  # the spec's fallback: a session to upload into
        assert resp.status == 202, await resp.text()
        resp = await client.put(resp.headers["Location"], params={"digest": digest}, data=data)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    return digest


async def test_sha512_end_to_end_on_the_embedded_backend(aiohttp_client, tmp_path, repo):
    from proxy.app import create_app
    from tests.conftest import make_config

    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))
    data = os.urandom(200_000)
    digest = await _sha512_push_modes(client, repo, data)
    for name in (repo, f"{repo}-chunked", f"{repo}-streamed", f"{repo}-mounted"):
        resp = await client.get(f"/v2/{name}/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == data
        assert resp.headers["Docker-Content-Digest"] == digest
    head = await client.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(data)
    resp = await client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and await resp.read() == data[10:20]
    # A wrong sha512 is refused and leaves nothing.
    wrong = sha512_of(b"other")
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": wrong}, data=b"bytes")
    assert resp.status == 400 and await error_code(resp) == "DIGEST_INVALID"
    assert (await client.head(f"/v2/{repo}/blobs/{wrong}")).status == 404
    # A manifest addressed by its sha512 digest, referencing sha512 blobs.
    config = b"{}"
    config_digest = sha512_of(config)
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": config_digest}, data=config)
    assert resp.status == 201
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_EMPTY, "digest": config_digest, "size": 2},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": digest, "size": len(data)}],
    }).encode()
    ref = sha512_of(manifest)
    resp = await client.put(f"/v2/{repo}/manifests/{ref}", data=manifest, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == ref
    resp = await client.get(f"/v2/{repo}/manifests/{ref}")
    assert resp.status == 200 and await resp.read() == manifest
    assert resp.headers["Docker-Content-Digest"] == ref
    head = await client.head(f"/v2/{repo}/manifests/{ref}")
    assert head.status == 200 and head.headers["Docker-Content-Digest"] == ref
    assert (await client.delete(f"/v2/{repo}/manifests/{ref}")).status == 202
    assert (await client.get(f"/v2/{repo}/manifests/{ref}")).status == 404


async def test_sha512_in_front_of_docker_registry(aiohttp_client, tmp_path, distribution, repo):
    """docker-registry 2.8 stores sha512 blobs (it reports its sha256 name for them) but
    refuses sha512 manifest digests: blobs work end to end (a mount, which it makes under
    the sha256 name only, falls back to an upload), manifests get a precise error."""
    from proxy.app import create_app
    from tests.conftest import make_config

    client = await aiohttp_client(create_app(make_config(tmp_path, "registry", distribution)))
    data = os.urandom(100_000)
    digest = await _sha512_push_modes(client, repo, data, mount_falls_back=True)
    for name in (repo, f"{repo}-chunked", f"{repo}-streamed", f"{repo}-mounted"):
        resp = await client.get(f"/v2/{name}/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == data
    resp = await client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and await resp.read() == data[10:20]
    config = b"{}"
    await push_blob(client, repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": descriptor(config, mt.OCI_EMPTY),
        "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": digest, "size": len(data)}],
    }).encode()
    # By tag, a manifest may reference sha512 blobs.
    resp = await client.put(f"/v2/{repo}/manifests/v1", data=manifest, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    # By its sha512 digest it cannot be stored there: said precisely, nothing left behind.
    ref = sha512_of(manifest + b" ")
    resp = await client.put(f"/v2/{repo}/manifests/{ref}", data=manifest + b" ", headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 400
    body = await resp.json()
    assert body["errors"][0]["code"] == "DIGEST_INVALID"
    assert "sha512" in body["errors"][0]["message"]
    assert (await client.get(f"/v2/{repo}/manifests/{ref}")).status == 404


@pytest.mark.parametrize(
    "layer,code",
    [
        # Non-distributable without urls: nowhere else to get it, so it must be here.
        ({"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"}, "MANIFEST_BLOB_UNKNOWN"),
        ({"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
          "urls": ["ftp://example.invalid/layer"]}, "MANIFEST_INVALID"),
        ({"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
          "urls": "https://example.invalid/layer"}, "MANIFEST_INVALID"),
        ({"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
          "urls": ["https://example.invalid/layer#frag"]}, "MANIFEST_INVALID"),
    ],
)
async def test_non_distributable_layer_rules(client, repo, layer, code):
    config = b'{"architecture":"amd64","os":"linux"}'
    await push_blob(client, repo, config)
    absent = os.urandom(32)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": descriptor(config, mt.OCI_CONFIG),
        "layers": [{**descriptor(absent, layer["mediaType"]), **layer}],
    }).encode()
    resp = await client.put(f"/v2/{repo}/manifests/v1", data=manifest, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 400 and await error_code(resp) == code
