"""The MUSTs and SHOULDs of the OCI distribution spec v1.1 (``spec.md``), one test per
requirement not covered elsewhere, on both backends (the ``client`` fixture).

Covered in other modules: API version check and its header (test_api_blobs), range
reads (test_api_blobs, test_api_exactness), cancel (test_api_blobs), tags pagination
with ``Link`` (test_api_manifests), referrers listing and filtering (test_api_manifests),
``TOOMANYREQUESTS`` (test_auth_tokens), ``DENIED`` per role (test_auth_matrix), sha512
(test_api_exactness).
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from proxy.oci import mediatypes as mt
from tests.support.oci import EMPTY_CONFIG, descriptor, digest_of, error_code, push_blob, push_image

EMPTY_BLOB_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def artifact(subject: dict | None = None, artifact_type: str | None = "application/vnd.example.thing",
             annotations: dict | None = None, config_type: str = mt.OCI_EMPTY) -> bytes:
    doc: dict = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": descriptor(EMPTY_CONFIG, config_type),
        "layers": [descriptor(EMPTY_CONFIG, mt.OCI_EMPTY)],
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    if subject:
        doc["subject"] = subject
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc).encode()


async def put_manifest(client, repo, reference, body, media_type=mt.OCI_MANIFEST):
    return await client.put(f"/v2/{repo}/manifests/{reference}", data=body, headers={"Content-Type": media_type})


async def assert_error(resp, status: int, code: str) -> None:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    entry = body["errors"][0]
    assert entry["code"] == code and isinstance(entry["message"], str)


# -- pull ---------------------------------------------------------------------------------------
async def test_manifest_get_and_head_headers(client, repo):
    digest, body = await push_image(client, repo, "v1", [b"layer"])
    for reference in ("v1", digest):
        resp = await client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": mt.OCI_MANIFEST})
        assert resp.status == 200
        assert await resp.read() == body  # byte for byte
        assert resp.headers["Content-Type"] == mt.OCI_MANIFEST  # no parameters
        assert resp.headers["Docker-Content-Digest"] == digest_of(body)
        head = await client.head(f"/v2/{repo}/manifests/{reference}", headers={"Accept": mt.OCI_MANIFEST})
        assert head.status == 200
        assert head.headers["Docker-Content-Digest"] == digest
        assert int(head.headers["Content-Length"]) == len(body)
        assert await head.read() == b""


async def test_manifest_unknown_is_404(client, repo):
    await push_image(client, repo, "v1", [b"layer"])
    for reference in ("nope", digest_of(b"absent")):
        await assert_error(await client.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
        assert (await client.head(f"/v2/{repo}/manifests/{reference}")).status == 404


async def test_manifest_of_unknown_repository_is_404(client, repo):
    resp = await client.get(f"/v2/{repo}-never/manifests/latest")
    assert resp.status == 404
    assert await error_code(resp) in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")


async def test_blob_get_and_head_headers(client, repo):
    data = os.urandom(5000)
    digest = await push_blob(client, repo, data)
    resp = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert resp.status == 200
    body = await resp.read()
    assert resp.headers["Docker-Content-Digest"] == digest == digest_of(body)
    head = await client.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status == 200 and head.headers["Docker-Content-Digest"] == digest
    assert int(head.headers["Content-Length"]) == len(data)
    assert await head.read() == b""
    missing = digest_of(b"missing")
    await assert_error(await client.get(f"/v2/{repo}/blobs/{missing}"), 404, "BLOB_UNKNOWN")
    head = await client.head(f"/v2/{repo}/blobs/{missing}")
    assert head.status == 404 and await head.read() == b""


# -- push: every upload mode ----------------------------------------------------------------------
async def test_post_then_put(client, repo):
    data = os.urandom(10_000)
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202
    location = resp.headers["Location"]
    assert f"/v2/{repo}/blobs/uploads/" in location
    resp = await client.put(location, params={"digest": digest_of(data)}, data=data,
                            headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 201
    blob_location = resp.headers["Location"]
    assert (await (await client.get(blob_location)).read()) == data  # a pullable URL


async def test_single_post(client, repo):
    data = os.urandom(10_000)
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(data)}, data=data,
                             headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest_of(data)
    assert (await (await client.get(resp.headers["Location"])).read()) == data


async def test_patch_chunked_with_status_and_closing_chunk(client, repo):
    data = os.urandom(30_000)
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert resp.status == 202
    location = resp.headers["Location"]
    offset = 0
    for piece in (data[:10_000], data[10_000:20_000]):
        resp = await client.patch(location, data=piece, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(piece) - 1}",
            "Content-Length": str(len(piece)),
        })
        assert resp.status == 202
        offset += len(piece)
        assert resp.headers["Range"] == f"0-{offset - 1}"  # the end value of the request's range
        location = resp.headers["Location"]
    status = await client.get(location)
    assert status.status == 204 and status.headers["Range"] == f"0-{offset - 1}" and "Location" in status.headers
    last = data[20_000:]
    resp = await client.put(status.headers["Location"], params={"digest": digest_of(data)}, data=last, headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{len(data) - 1}",
    })
    assert resp.status == 201, await resp.text()
    assert await (await client.get(resp.headers["Location"])).read() == data


async def test_patch_stream_then_put_without_body(client, repo):
    data = os.urandom(200_000)

    async def body():
        for i in range(0, len(data), 32_768):
            yield data[i : i + 32_768]

    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    resp = await client.patch(resp.headers["Location"], data=body(), headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 202 and resp.headers["Range"] == f"0-{len(data) - 1}"
    resp = await client.put(resp.headers["Location"], params={"digest": digest_of(data)})
    assert resp.status == 201
    assert await (await client.get(f"/v2/{repo}/blobs/{digest_of(data)}")).read() == data


async def test_closing_put_with_a_range_not_at_the_offset_is_416(client, repo):
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    resp = await client.patch(resp.headers["Location"], data=b"abc", headers={"Content-Range": "0-2"})
    location = resp.headers["Location"]
    resp = await client.put(location, params={"digest": digest_of(b"abcdef")}, data=b"def",
                            headers={"Content-Range": "4-6"})
    await assert_error(resp, 416, "RANGE_INVALID")
    assert resp.headers["Range"] == "0-2"
    resp = await client.put(resp.headers["Location"], params={"digest": digest_of(b"abcdef")}, data=b"def",
                            headers={"Content-Range": "3-5"})
    assert resp.status == 201


async def test_mount_from_another_repository(client, repo):
    data = os.urandom(2000)
    digest = await push_blob(client, repo, data)
    target = f"{repo}-target"
    resp = await client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": repo})
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await (await client.get(resp.headers["Location"])).read() == data


async def test_anonymous_mount_opens_a_session(client, repo):
    """``from`` omitted: the registry MAY mount; algomint never guesses a source (that
    would hand out blobs of repositories the caller may not read) and opens a session."""
    data = os.urandom(2000)
    digest = await push_blob(client, repo, data)
    target = f"{repo}-anon"
    resp = await client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest})
    assert resp.status == 202
    assert (await client.head(f"/v2/{target}/blobs/{digest}")).status == 404
    resp = await client.put(resp.headers["Location"], params={"digest": digest}, data=data)
    assert resp.status == 201


async def test_unmountable_blob_opens_a_session(client, repo):
    digest = digest_of(b"nowhere")
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": f"{repo}-src"})
    assert resp.status == 202 and "Location" in resp.headers


async def test_same_blob_pushed_twice(client, repo):
    data = os.urandom(1000)
    assert await push_blob(client, repo, data) == await push_blob(client, repo, data)
    assert await (await client.get(f"/v2/{repo}/blobs/{digest_of(data)}")).read() == data


# -- empty blobs -------------------------------------------------------------------------------
async def test_empty_json_blob(client, repo):
    """The 2-byte ``{}`` blob (image-spec's empty descriptor) round-trips."""
    assert await push_blob(client, repo, EMPTY_CONFIG) == EMPTY_JSON_DIGEST
    resp = await client.get(f"/v2/{repo}/blobs/{EMPTY_JSON_DIGEST}")
    assert resp.status == 200 and await resp.read() == b"{}"
    assert int((await client.head(f"/v2/{repo}/blobs/{EMPTY_JSON_DIGEST}")).headers["Content-Length"]) == 2
    resp = await put_manifest(client, repo, "empty", artifact())
    assert resp.status == 201, await resp.text()


async def test_empty_blob_push(client, repo):
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": EMPTY_BLOB_DIGEST}, data=b"")
    assert resp.status == 201, await resp.text()
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    resp = await client.put(resp.headers["Location"], params={"digest": EMPTY_BLOB_DIGEST})
    assert resp.status == 201, await resp.text()


async def test_empty_blob_read(client, repo):
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": EMPTY_BLOB_DIGEST}, data=b"")
    assert resp.status == 201
    head = await client.head(f"/v2/{repo}/blobs/{EMPTY_BLOB_DIGEST}")
    assert head.status == 200 and head.headers["Content-Length"] == "0"
    resp = await client.get(f"/v2/{repo}/blobs/{EMPTY_BLOB_DIGEST}")
    assert resp.status == 200 and await resp.read() == b""
    assert resp.headers["Docker-Content-Digest"] == EMPTY_BLOB_DIGEST
    # The connection is still in step: a next request on it gets its own answer.
    assert (await client.get("/v2/")).status == 200


# -- manifests ----------------------------------------------------------------------------------
async def test_manifest_put_answer(client, repo):
    body = artifact()
    await push_blob(client, repo, EMPTY_CONFIG)
    resp = await put_manifest(client, repo, "v1", body)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest_of(body)
    got = await client.get(resp.headers["Location"], headers={"Accept": mt.OCI_MANIFEST})
    assert await got.read() == body
    resp = await put_manifest(client, repo, digest_of(body), body)
    assert resp.status == 201 and resp.headers["Docker-Content-Digest"] == digest_of(body)


async def test_content_type_parameters_are_ignored_on_put(client, repo):
    body = artifact()
    await push_blob(client, repo, EMPTY_CONFIG)
    resp = await put_manifest(client, repo, "v1", body, media_type=f"{mt.OCI_MANIFEST}; charset=utf-8")
    assert resp.status == 201, await resp.text()
    got = await client.get(f"/v2/{repo}/manifests/v1")
    assert got.headers["Content-Type"] == mt.OCI_MANIFEST


async def test_manifest_with_unknown_subject_is_accepted(client, repo):
    """A registry MUST accept a manifest whose subject does not exist (yet)."""
    await push_blob(client, repo, EMPTY_CONFIG)
    absent = {"mediaType": mt.OCI_MANIFEST, "digest": digest_of(b"not pushed yet"), "size": 14}
    body = artifact(subject=absent)
    resp = await put_manifest(client, repo, digest_of(body), body)
    assert resp.status == 201, await resp.text()
    assert resp.headers["OCI-Subject"] == absent["digest"]
    listed = await (await client.get(f"/v2/{repo}/referrers/{absent['digest']}")).json()
    assert [m["digest"] for m in listed["manifests"]] == [digest_of(body)]


async def test_manifest_size_limits(client, repo):
    await push_blob(client, repo, EMPTY_CONFIG)
    # At least 4 MiB SHOULD be accepted...
    padding = "x" * (4 * 1024 * 1024 - 1024)
    big = artifact(annotations={"pad": padding})
    assert len(big) <= 4 * 1024 * 1024
    resp = await put_manifest(client, repo, "big", big)
    assert resp.status == 201, (await resp.text())[:300]
    # ...and past the limit the answer SHOULD be 413.
    huge = artifact(annotations={"pad": "x" * (4 * 1024 * 1024 + 1)})
    resp = await put_manifest(client, repo, "huge", huge)
    assert resp.status == 413


async def test_index_and_index_referrer_artifact_type(client, repo):
    child_digest, child = await push_image(client, repo, "child", [b"c"])
    index = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_INDEX,
        "manifests": [descriptor(child, mt.OCI_MANIFEST)],
        "subject": descriptor(child, mt.OCI_MANIFEST),
        "annotations": {"k": "v"},
    }).encode()
    resp = await put_manifest(client, repo, digest_of(index), index, mt.OCI_INDEX)
    assert resp.status == 201, await resp.text()
    await push_blob(client, repo, EMPTY_CONFIG)
    plain = artifact(subject=descriptor(child, mt.OCI_MANIFEST), artifact_type=None,
                     config_type="application/vnd.example.config")
    await push_blob(client, repo, EMPTY_CONFIG)
    resp = await put_manifest(client, repo, digest_of(plain), plain)
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/{repo}/referrers/{child_digest}")
    assert resp.headers["Content-Type"] == mt.OCI_INDEX
    listed = {m["digest"]: m for m in (await resp.json())["manifests"]}
    # An index without artifactType: none; annotations copied.
    assert "artifactType" not in listed[digest_of(index)] and listed[digest_of(index)]["annotations"] == {"k": "v"}
    # A manifest without artifactType: its config's media type.
    assert listed[digest_of(plain)]["artifactType"] == "application/vnd.example.config"


async def test_referrers_of_unknown_digest_is_an_empty_index(client, repo):
    await push_image(client, repo, "v1", [b"layer"])
    resp = await client.get(f"/v2/{repo}/referrers/{digest_of(b'nobody refers to this')}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == mt.OCI_INDEX
    doc = await resp.json()
    assert doc == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    resp = await client.get(f"/v2/{repo}/referrers/sha256:nothex")
    await assert_error(resp, 400, "DIGEST_INVALID")


# -- tags ------------------------------------------------------------------------------------
async def test_tags_list_shape_and_order(client, repo):
    tags = ["b", "A", "a", "10", "9", "_x"]
    for tag in tags:
        await push_image(client, repo, tag, [b"layer"])
    resp = await client.get(f"/v2/{repo}/tags/list")
    assert resp.status == 200
    assert await resp.json() == {"name": repo, "tags": sorted(tags)}  # Go's sort.Strings order


async def test_tags_n_zero_and_last_alone(client, repo):
    for tag in ("t1", "t2", "t3"):
        await push_image(client, repo, tag, [b"layer"])
    resp = await client.get(f"/v2/{repo}/tags/list", params={"n": "0"})
    assert resp.status == 200 and (await resp.json())["tags"] == [] and "Link" not in resp.headers
    resp = await client.get(f"/v2/{repo}/tags/list", params={"last": "t1"})
    assert (await resp.json())["tags"] == ["t2", "t3"]
    resp = await client.get(f"/v2/{repo}/tags/list", params={"n": "2"})
    assert (await resp.json())["tags"] == ["t1", "t2"]  # exactly n when more exist


# -- content management ---------------------------------------------------------------------------
async def test_delete_manifest_then_tags_and_digest_are_404(client, repo):
    digest, _ = await push_image(client, repo, "v1", [b"layer"])
    resp = await client.delete(f"/v2/{repo}/manifests/{digest}")
    assert resp.status == 202
    for reference in (digest, "v1"):
        await assert_error(await client.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
    resp = await client.delete(f"/v2/{repo}/manifests/{digest}")
    assert resp.status == 404


async def test_delete_tag(client, repo, backend_kind):
    digest, _ = await push_image(client, repo, "v1", [b"layer"])
    resp = await client.delete(f"/v2/{repo}/manifests/v1")
    if backend_kind == "registry":  # docker-registry cannot untag: "400 or 405" when disabled
        assert resp.status in (400, 405)
        return
    assert resp.status == 202
    await assert_error(await client.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert (await client.get(f"/v2/{repo}/manifests/{digest}")).status == 200


async def test_delete_in_unknown_repository_is_404(client, repo):
    resp = await client.delete(f"/v2/{repo}-never/manifests/{digest_of(b'x')}")
    assert resp.status == 404
    resp = await client.delete(f"/v2/{repo}-never/blobs/{digest_of(b'x')}")
    assert resp.status == 404


# -- every error code -------------------------------------------------------------------------------
async def test_error_blob_upload_unknown_and_invalid(client, repo):
    resp = await client.get(f"/v2/{repo}/blobs/uploads/00000000-0000-4000-8000-000000000000")
    await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    location = resp.headers["Location"]
    for malformed in ("abc", "0-", "-2", "0-2,3-4"):
        resp = await client.patch(location, data=b"abc", headers={"Content-Range": malformed})
        await assert_error(resp, 400, "BLOB_UPLOAD_INVALID")
    # The HTTP spellings of the same range are accepted.
    resp = await client.patch(location, data=b"abc", headers={"Content-Range": "bytes 0-2/3"})
    assert resp.status == 202 and resp.headers["Range"] == "0-2"
    resp = await client.patch(resp.headers["Location"], data=b"def", headers={"Content-Range": "bytes=3-5"})
    assert resp.status == 202 and resp.headers["Range"] == "0-5"


async def test_error_digest_invalid(client, repo):
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(b"other")}, data=b"data")
    await assert_error(resp, 400, "DIGEST_INVALID")
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": "sha256:short"}, data=b"data")
    await assert_error(resp, 400, "DIGEST_INVALID")
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    resp = await client.put(resp.headers["Location"], data=b"data")  # no digest at all
    await assert_error(resp, 400, "DIGEST_INVALID")
    body = artifact()
    await push_blob(client, repo, EMPTY_CONFIG)
    resp = await put_manifest(client, repo, digest_of(b"not this manifest"), body)
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_error_manifest_blob_unknown(client, repo):
    body = artifact()  # its config blob was never pushed to this repository
    await assert_error(await put_manifest(client, repo, "v1", body), 400, "MANIFEST_BLOB_UNKNOWN")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"schemaVersion": 1}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": []}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                    "config": {"mediaType": mt.OCI_EMPTY, "digest": "sha256:zz", "size": 2}, "layers": []}).encode(),
    ],
)
async def test_error_manifest_invalid(client, repo, body):
    await assert_error(await put_manifest(client, repo, "v1", body), 400, "MANIFEST_INVALID")


async def test_error_manifest_media_type_mismatch(client, repo):
    await push_blob(client, repo, EMPTY_CONFIG)
    resp = await put_manifest(client, repo, "v1", artifact(), media_type=mt.DOCKER_MANIFEST)
    await assert_error(resp, 400, "MANIFEST_INVALID")


async def test_error_name_invalid_and_unknown(client, repo):
    await assert_error(await client.get("/v2/UPPER/tags/list"), 400, "NAME_INVALID")
    await assert_error(await client.get(f"/v2/{repo}-never/tags/list"), 404, "NAME_UNKNOWN")


async def test_error_size_invalid(client, repo):
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    resp = await client.patch(resp.headers["Location"], data=b"12345", headers={"Content-Range": "0-9"})
    await assert_error(resp, 400, "SIZE_INVALID")


async def test_error_tag_invalid(client, repo):
    await push_blob(client, repo, EMPTY_CONFIG)
    await assert_error(await put_manifest(client, repo, "-bad", artifact()), 400, "TAG_INVALID")


async def test_error_pagination_number_invalid(client, repo):
    await push_image(client, repo, "v1", [b"layer"])
    await assert_error(await client.get(f"/v2/{repo}/tags/list", params={"n": "x"}), 400, "PAGINATION_NUMBER_INVALID")


async def test_error_unsupported(client, repo):
    resp = await client.patch(f"/v2/{repo}/manifests/v1", data=b"{}")
    await assert_error(resp, 405, "UNSUPPORTED")


async def test_error_unauthorized(aiohttp_client, tmp_path):
    from proxy.app import create_app
    from tests.support.auth import auth_config

    client = await aiohttp_client(create_app(auth_config(tmp_path, "filesystem")))
    resp = await client.get("/v2/")
    await assert_error(resp, 401, "UNAUTHORIZED")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_error_denied(aiohttp_client, tmp_path, repo):
    from proxy.app import create_app
    from tests.conftest import make_config

    config = make_config(tmp_path, "filesystem")
    config.storage.upload_quota = 10
    client = await aiohttp_client(create_app(config))
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(b"x" * 20)}, data=b"x" * 20)
    await assert_error(resp, 403, "DENIED")


async def test_sha512_digest_grammar(client, repo):
    """A well-formed sha512 digest is a digest, never a bad one: unknown blob, 404."""
    digest = "sha512:" + hashlib.sha512(b"absent").hexdigest()
    await assert_error(await client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    await assert_error(await client.get(f"/v2/{repo}/blobs/sha512:abc"), 400, "DIGEST_INVALID")


async def test_finished_session_is_gone(client, repo):
    data = b"finished"
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    location = resp.headers["Location"]
    resp = await client.put(location, params={"digest": digest_of(data)}, data=data)
    assert resp.status == 201
    await assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(await client.patch(location, data=b"more"), 404, "BLOB_UPLOAD_UNKNOWN")
    resp = await client.put(location, params={"digest": digest_of(data)}, data=data)
    await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_chunked_digest_mismatch_discards_the_session(client, repo):
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    resp = await client.patch(resp.headers["Location"], data=b"abc", headers={"Content-Range": "0-2"})
    location = resp.headers["Location"]
    await assert_error(await client.put(location, params={"digest": digest_of(b"xyz")}), 400, "DIGEST_INVALID")
    for digest in (digest_of(b"abc"), digest_of(b"xyz")):
        assert (await client.head(f"/v2/{repo}/blobs/{digest}")).status == 404


async def test_tags_n_past_the_end_has_no_link(client, repo):
    for tag in ("a", "b"):
        await push_image(client, repo, tag, [b"layer"])
    resp = await client.get(f"/v2/{repo}/tags/list", params={"n": "5"})
    assert (await resp.json())["tags"] == ["a", "b"] and "Link" not in resp.headers
    resp = await client.get(f"/v2/{repo}/tags/list", params={"n": "1"})
    assert (await resp.json())["tags"] == ["a"] and 'rel="next"' in resp.headers["Link"]


async def test_index_with_unknown_child_is_manifest_blob_unknown(client, repo):
    index = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_INDEX,
        "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": digest_of(b"no such manifest"), "size": 16}],
    }).encode()
    await assert_error(await put_manifest(client, repo, "v1", index, mt.OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")
