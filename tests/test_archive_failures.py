"""Archive streams that must not end cleanly, and clients that leave mid-archive."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from proxy.app import BACKEND, create_app
from tests.conftest import make_config
from tests.support.oci import push_image


@pytest.fixture
async def fs_client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))


def _rot(app, layer: bytes) -> None:
    """Flip one byte of a stored blob file: bit rot at rest, the size still right."""
    encoded = hashlib.sha256(layer).hexdigest()
    path = app[BACKEND]._blob_path(type("D", (), {"algorithm": "sha256", "encoded": encoded})())
    data = bytearray(path.read_bytes())
    data[2_000_000] ^= 0xFF
    path.write_bytes(bytes(data))


async def test_corrupt_blob_aborts_the_connection_after_a_restart(aiohttp_client, tmp_path, repo):
    layer = b"L" * 3_000_000
    first = await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))
    await push_image(first, repo, "v1", [layer])
    _rot(first.server.app, layer)
    await first.close()
    # A restarted process has verified nothing yet: the first whole read hashes.
    again = await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))
    for path in (f"/api/v1/archive/{repo}:v1", f"/v2/{repo}/blobs/sha256:{hashlib.sha256(layer).hexdigest()}"):
        resp = await again.get(path)
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_verify_reads_always_catches_rot_in_the_same_process(aiohttp_client, tmp_path, repo):
    layer = b"L" * 3_000_000
    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem", storage_verify_reads="always")))
    await push_image(client, repo, "v1", [layer])
    _rot(client.server.app, layer)
    resp = await client.get(f"/api/v1/archive/{repo}:v1")
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
