"""Archive streams that must not end cleanly, and clients that leave mid-archive."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy.app import BACKEND, create_app
from tests.conftest import make_config
from tests.support.oci import push_image


@pytest.fixture
async def fs_client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))


async def test_corrupt_blob_aborts_the_connection(fs_client, tmp_path, repo):
    layer = b"L" * 3_000_000
    await push_image(fs_client, repo, "v1", [layer])
    import hashlib

    encoded = hashlib.sha256(layer).hexdigest()
    path = fs_client.server.app[BACKEND]._blob_path(type("D", (), {"algorithm": "sha256", "encoded": encoded})())
    data = bytearray(path.read_bytes())
    data[2_000_000] ^= 0xFF  # bit rot at rest: the size is right, the digest is not
    path.write_bytes(bytes(data))
    resp = await fs_client.get(f"/api/v1/archive/{repo}:v1")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_client_leaving_mid_archive_closes_backend_streams(fs_client, repo):
    await push_image(fs_client, repo, "v1", [b"x" * 8_000_000])
    metrics = fs_client.server.app
    resp = await fs_client.get(f"/api/v1/archive/{repo}:v1")
    await resp.content.read(100_000)
    resp.close()
    from proxy.api.state import METRICS

    gauge = metrics[METRICS].in_flight_streams
    for _ in range(100):
        if gauge._value.get() == 0:
            break
        await asyncio.sleep(0.02)
    assert gauge._value.get() == 0
    # The server still serves the next download in full.
    again = await fs_client.get(f"/api/v1/archive/{repo}:v1")
    assert len(await again.read()) == int(again.headers["Content-Length"])
