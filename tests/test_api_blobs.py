"""Blob uploads and downloads through /v2, on both backends."""

from __future__ import annotations

import os

import pytest

from tests.support.oci import digest_of, error_code, push_blob


async def test_version_check(client):
    resp = await client.get("/v2/")
    assert resp.status == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_monolithic_upload_and_get(client, repo):
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = await push_blob(client, repo, data)
    resp = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == digest
    assert int(resp.headers["Content-Length"]) == len(data)
    assert await resp.read() == data
    head = await client.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(data)


async def test_chunked_upload_follows_location(client, repo):
    data = os.urandom(2 * 1024 * 1024 + 5)
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202
    location = resp.headers["Location"]
    pieces = [data[:1000000], data[1000000:2000000], data[2000000:]]
    offset = 0
    for piece in pieces[:-1]:
        resp = await client.patch(
            location,
            data=piece,
            headers={"Content-Range": f"{offset}-{offset + len(piece) - 1}", "Content-Type": "application/octet-stream"},
        )
        assert resp.status == 202, await resp.text()
        offset += len(piece)
        assert resp.headers["Range"] == f"0-{offset - 1}"
        location = resp.headers["Location"]
    status = await client.get(location)
    assert status.status == 204 and status.headers["Range"] == f"0-{offset - 1}"
    resp = await client.put(location, params={"digest": digest_of(data)}, data=pieces[-1])
    assert resp.status == 201, await resp.text()
    got = await client.get(f"/v2/{repo}/blobs/{digest_of(data)}")
    assert await got.read() == data


async def test_streamed_patch_without_range(client, repo):
    data = os.urandom(300_000)

    async def body():
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    resp = await client.patch(resp.headers["Location"], data=body())
    assert resp.status == 202
    resp = await client.put(resp.headers["Location"], params={"digest": digest_of(data)})
    assert resp.status == 201


async def test_out_of_order_chunk_is_416(client, repo):
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    resp = await client.patch(resp.headers["Location"], data=b"abc", headers={"Content-Range": "5-7"})
    assert resp.status == 416
    assert await error_code(resp) == "RANGE_INVALID"


async def test_digest_mismatch_leaves_nothing(client, repo):
    data = b"hello world"
    wrong = digest_of(b"something else")
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": wrong}, data=data)
    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"
    for digest in (wrong, digest_of(data)):
        assert (await client.head(f"/v2/{repo}/blobs/{digest}")).status == 404


async def test_cancel_and_unknown_upload(client, repo):
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    location = resp.headers["Location"]
    assert (await client.delete(location)).status == 204
    resp = await client.get(location)
    assert resp.status == 404 and await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    resp = await client.patch(f"/v2/{repo}/blobs/uploads/not-a-session", data=b"x")
    assert resp.status == 404 and await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"


@pytest.mark.parametrize(
    "header,status,expected",
    [
        ("bytes=0-9", 206, slice(0, 10)),
        ("bytes=100-", 206, slice(100, None)),
        ("bytes=-50", 206, slice(-50, None)),
        ("bytes=990-5000", 206, slice(990, None)),
        ("bytes=1000-", 416, None),
        ("bytes=5-2", 416, None),
        ("bytes=0-1,5-6", 200, slice(None)),
        ("items=0-1", 200, slice(None)),
    ],
)
async def test_range_requests(client, repo, header, status, expected):
    data = os.urandom(1000)
    digest = await push_blob(client, repo, data)
    resp = await client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert resp.status == status
    if status == 200:  # ignored (unknown unit) or answered whole (multi-range)
        assert await resp.read() == data and "Content-Range" not in resp.headers
    elif expected is not None:
        assert await resp.read() == data[expected]
        start = range(len(data))[expected][0]
        assert resp.headers["Content-Range"].startswith(f"bytes {start}-")
    else:
        assert await error_code(resp) == "RANGE_INVALID"
        assert resp.headers["Content-Range"] == "bytes */1000"


async def test_cross_repository_mount(client, repo):
    data = os.urandom(1234)
    digest = await push_blob(client, repo, data)
    other = repo + "-mounted"
    resp = await client.post(f"/v2/{other}/blobs/uploads/", params={"mount": digest, "from": repo})
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await (await client.get(f"/v2/{other}/blobs/{digest}")).read() == data
    # Unknown source: falls back to an ordinary session.
    resp = await client.post(f"/v2/{other}-x/blobs/uploads/", params={"mount": digest_of(b"nope"), "from": repo})
    assert resp.status == 202 and "Location" in resp.headers


async def test_blob_delete(client, repo):
    digest = await push_blob(client, repo, b"to be deleted")
    assert (await client.delete(f"/v2/{repo}/blobs/{digest}")).status == 202
    resp = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert resp.status == 404 and await error_code(resp) == "BLOB_UNKNOWN"


@pytest.mark.parametrize(
    "path,code",
    [
        ("/v2/Upper/blobs/sha256:" + "a" * 64, "NAME_INVALID"),
        ("/v2/a//b/blobs/sha256:" + "a" * 64, "NAME_INVALID"),
        ("/v2/" + "a" * 256 + "/blobs/sha256:" + "a" * 64, "NAME_INVALID"),
        ("/v2/ok/blobs/sha256:xyz", "DIGEST_INVALID"),
        ("/v2/ok/blobs/md5:" + "a" * 32, "DIGEST_INVALID"),
        ("/v2/ok/blobs/sha256:" + "a" * 64, "BLOB_UNKNOWN"),
    ],
)
async def test_bad_names_and_digests(client, path, code):
    resp = await client.get(path)
    assert 400 <= resp.status < 500
    assert await error_code(resp) == code


async def test_traversal_name_refused(client):
    resp = await client.get("/v2/a/%2E%2E/b/tags/list")
    assert resp.status in (400, 404)
    assert await error_code(resp) in ("NAME_INVALID", "NAME_UNKNOWN")
