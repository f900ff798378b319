"""Clients that go away mid-stream cost nothing lasting; expired sessions leave no files."""

from __future__ import annotations

import asyncio
import logging
import os
import re

import aiohttp

from proxy.app import BACKEND, create_app
from tests.conftest import make_config
from tests.support.oci import digest_of, push_blob


async def _streams_in_flight(client) -> float:
    text = await (await client.get("/metrics")).text()
    return float(re.search(r"^algomint_streams_in_flight (\S+)$", text, re.M).group(1))


async def test_download_disconnect_closes_stream(client, repo):
    data = os.urandom(32 * 1024 * 1024)
    digest = await push_blob(client, repo, data)
    url = f"http://127.0.0.1:{client.server.port}/v2/{repo}/blobs/{digest}"
    async with aiohttp.ClientSession() as session:
        resp = await session.get(url)
        await resp.content.read(1024 * 1024)
        resp.close()  # drop the connection with most of the blob unread
    for _ in range(100):
        if await _streams_in_flight(client) == 0:
            break
        await asyncio.sleep(0.05)
    assert await _streams_in_flight(client) == 0
    # The service keeps serving the same blob in full afterwards.
    assert await (await client.get(f"/v2/{repo}/blobs/{digest}")).read() == data


async def test_upload_disconnect_then_expiry_leaves_no_files(aiohttp_client, tmp_path):
    config = make_config(tmp_path, "filesystem")
    app = create_app(config)
    client = await aiohttp_client(app)
    repo = "test/disconnect"
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    location = resp.headers["Location"]

    async def body():
        yield b"x" * 1024 * 1024
        raise ConnectionResetError("client went away")

    url = f"http://127.0.0.1:{client.server.port}{location}"
    async with aiohttp.ClientSession() as session:
        try:
            await session.patch(url, data=body())
        except (aiohttp.ClientError, ConnectionResetError):
            pass
    # The session still exists (it may be resumed) until it expires.
    backend = app[BACKEND]
    backend.upload_expiry = 0.0
    # The server may still be finishing the cut-off PATCH (it holds the session then).
    purged = 0
    for _ in range(100):
        purged += await backend.purge_expired_uploads()
        if purged:
            break
        await asyncio.sleep(0.05)
    assert purged == 1
    leftovers = [p for p in (tmp_path / "storage").rglob("*") if p.is_file() and "_uploads" in p.parts]
    assert leftovers == []
    resp = await client.get(location)
    assert resp.status == 404


async def test_public_url_makes_absolute_locations(aiohttp_client, tmp_path):
    config = make_config(tmp_path, "filesystem", server__public_url="https://registry.example.test")
    client = await aiohttp_client(create_app(config))
    resp = await client.post("/v2/test/abs/blobs/uploads/")
    assert resp.headers["Location"].startswith("https://registry.example.test/v2/test/abs/blobs/uploads/")
    data = b"abs"
    resp = await client.post("/v2/test/abs/blobs/uploads/", params={"digest": digest_of(data)}, data=data)
    assert resp.headers["Location"] == f"https://registry.example.test/v2/test/abs/blobs/{digest_of(data)}"


async def test_patch_disconnect_is_logged_as_such_not_as_500(client, repo, caplog):
    """A client that drops mid-PATCH is an INFO "client disconnected" (status 499), never
    an ERROR with a traceback nor a 500 in the metrics."""
    caplog.set_level(logging.INFO)
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    location = resp.headers["Location"]
    sent = asyncio.Event()

    async def body():
        yield b"x" * 1024 * 1024
        sent.set()
        await asyncio.sleep(0.2)
        raise ConnectionResetError("client went away")

    url = f"http://127.0.0.1:{client.server.port}{location}"
    async with aiohttp.ClientSession() as session:
        try:
            await session.patch(url, data=body())
        except (aiohttp.ClientError, ConnectionResetError):
            pass
    metric = 'algomint_http_requests_total{method="PATCH",route="v2.upload.patch",status="499"} 1.0'
    for _ in range(100):
        text = await (await client.get("/metrics")).text()
        if metric in text:
            break
        await asyncio.sleep(0.05)
    assert metric in text
    assert 'route="v2.upload.patch",status="500"' not in text
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    gone = [r for r in caplog.records if r.getMessage() == "client disconnected"]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO and gone[0].status == 499
    assert gone[0].route == "v2.upload.patch"
