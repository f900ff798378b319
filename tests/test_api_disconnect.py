"""Clients that go away mid-stream cost nothing lasting; expired sessions leave no files."""

from __future__ import annotations

import asyncio
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
    await asyncio.sleep(0.05)
    assert await backend.purge_expired_uploads() == 1
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
