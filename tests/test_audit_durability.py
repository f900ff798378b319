"""No acknowledged mutation without its audit record: a real server is killed with SIGKILL
in the middle of many concurrent manifest pushes, and every push it answered 201 must
have its ``manifest.push`` record in the database, with the chain intact. Both backends."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.oci import mediatypes as mt
from tests.conftest import BACKENDS
from tests.support.oci import digest_of, image_manifest
from tests.support.server import Server, start_server

PUSHES = 400
# Kill once this many pushes were acknowledged: hundreds are still in flight then.
KILL_AFTER = 40
CONFIG_BLOB = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
LAYER = b"durability layer"


def _config_text(workdir: Path, backend: str, registry_url: str | None) -> str:
    storage = f'[storage]\npath = "{workdir / "storage"}"\n'
    if backend == "registry":
        storage += f'backend = "registry"\nurl = "{registry_url}"\n'
    # A long interval: acknowledgement must not depend on the timer writing the batch.
    return storage + f'[metadata]\npath = "{workdir / "metadata.db"}"\n[audit]\nflush_interval = 2\n'


async def _push_until_killed(server: Server, repo: str) -> list[str]:
    acked: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(server.url, connector=connector) as http:
        for blob in (CONFIG_BLOB, LAYER):
            resp = await http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob)
            assert resp.status == 201, await resp.text()

        async def push(i: int) -> None:
            tag = f"t{i}"
            manifest = image_manifest(CONFIG_BLOB, [LAYER], annotations={"n": str(i)})
            try:
                async with http.put(f"/v2/{repo}/manifests/{tag}", data=manifest,
                                    headers={"Content-Type": mt.OCI_MANIFEST}) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return  # never answered: not acknowledged
            if status == 201:
                acked.append(tag)
                if len(acked) == KILL_AFTER:
                    server.process.kill()

        await asyncio.gather(*(push(i) for i in range(PUSHES)))
    return acked


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_acknowledged_push_has_a_durable_record_after_sigkill(tmp_path: Path, backend: str,
                                                                           request: pytest.FixtureRequest):
    registry_url = request.getfixturevalue("distribution").url if backend == "registry" else None
    workdir = tmp_path / "srv"
    server = await asyncio.to_thread(start_server, workdir, _config_text(workdir, backend, registry_url))
    repo = f"generic/durable-{backend}"
    try:
        acked = await _push_until_killed(server, repo)
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(10)
    assert server.process.returncode == -9, "the server was meant to die by SIGKILL mid-flight"
    assert KILL_AFTER <= len(acked) < PUSHES

    conn = sqlite3.connect(workdir / "metadata.db")
    recorded = {row[0] for row in conn.execute(
        "SELECT reference FROM audit_log WHERE action = 'manifest.push' AND outcome = 'success' AND repository = ?",
        (repo,))}
    conn.close()
    missing = sorted(set(acked) - recorded, key=lambda t: int(t[1:]))
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged pushes have no record: {missing[:10]}"

    verify = subprocess.run([sys.executable, "-m", "proxy.cli", "audit", "verify", "--config",
                             str(workdir / "algomint.toml"), "--json"], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    result = json.loads(verify.stdout)
    assert result["ok"] is True and result["records"] >= len(acked) + 2  # the two blob pushes too
