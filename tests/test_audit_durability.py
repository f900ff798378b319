"""No acknowledged mutation without its audit record: a real server is killed with SIGKILL
in the middle of many concurrent manifest pushes, and every push it answered 201 must
have its ``manifest.push`` record in the database, with the chain intact. Both backends."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from proxy.api.state import DATABASE
from proxy.oci import mediatypes as mt
from tests.conftest import BACKENDS, metadata_database
from tests.support.oci import digest_of, image_manifest
from tests.support.server import Server, start_server

PUSHES = 400
# Kill once this many pushes were acknowledged: hundreds are still in flight then.
KILL_AFTER = 40
CONFIG_BLOB = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
LAYER = b"durability layer"


def _config_text(workdir: Path, backend: str, registry_url: str | None, sync: str) -> str:
    storage = f'[storage]\npath = "{workdir / "storage"}"\n'
    if backend == "registry":
        storage += f'backend = "registry"\nurl = "{registry_url}"\n'
    # A long interval: acknowledgement must not depend on the timer writing the batch.
    return storage + f'[metadata]\npath = "{workdir / "metadata.db"}"\n[audit]\nflush_interval = 2\nsync = "{sync}"\n'


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


@pytest.mark.sqlite_only
@pytest.mark.parametrize("backend,sync", [(b, "full") for b in BACKENDS] + [("filesystem", "normal")])
async def test_every_acknowledged_push_has_a_durable_record_after_sigkill(tmp_path: Path, backend: str, sync: str,
                                                                           request: pytest.FixtureRequest):
    registry_url = request.getfixturevalue("distribution").url if backend == "registry" else None
    workdir = tmp_path / "srv"
    server = await asyncio.to_thread(start_server, workdir, _config_text(workdir, backend, registry_url, sync))
    repo = f"generic/durable-{backend}"
    try:
        acked = await _push_until_killed(server, repo)
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(10)
    assert server.process.returncode == -9, "the server was meant to die by SIGKILL mid-flight"
    assert len(acked) >= KILL_AFTER

    conn = sqlite3.connect(workdir / "metadata.db")
    recorded = {row[0] for row in conn.execute(
        "SELECT reference FROM audit_log WHERE action = 'manifest.push' AND outcome = 'success' AND repository = ?",
        (repo,))}
    conn.close()
    missing = sorted(set(acked) - recorded, key=lambda t: int(t[1:]))
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged pushes have no record: {missing[:10]}"

    verify = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "proxy.cli", "audit", "verify", "--config", str(workdir / "algomint.toml"),
                         "--json"], check=False, capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    result = json.loads(verify.stdout)
    assert result["ok"] is True and result["records"] >= len(acked) + 2  # the two blob pushes too


# -- when the record cannot be written: no acknowledgement ------------------------------

async def test_a_change_whose_record_cannot_be_written_is_not_acknowledged(aiohttp_client, tmp_path: Path,
                                                                            backend_kind: str,
                                                                            request: pytest.FixtureRequest,
                                                                            monkeypatch: pytest.MonkeyPatch):
    from proxy.app import create_app
    from proxy.audit.middleware import AUDIT
    from proxy.meta import MetadataError
    from tests.conftest import make_config
    from tests.support.oci import push_blob

    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    app = create_app(make_config(tmp_path, backend_kind, dist, audit__ack_timeout=0.5))
    client = await aiohttp_client(app)
    repo = f"generic/unrecorded-{uuid.uuid4().hex[:8]}"
    await push_blob(client, repo, CONFIG_BLOB)
    await push_blob(client, repo, LAYER)
    log = app[AUDIT]
    real = log._write

    async def broken(batch):
        raise MetadataError("metadata store: disk I/O error")

    monkeypatch.setattr(log, "_write", broken)
    resp = await client.put(f"/v2/{repo}/manifests/v1", data=image_manifest(CONFIG_BLOB, [LAYER]),
                            headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 503
    assert (await resp.json())["errors"][0]["code"] == "UNAVAILABLE"
    resp = await client.post("/api/v1/chains", json={"name": "x"})
    assert resp.status == 503 and "audit" in (await resp.json())["error"]["message"]

    # Once the store writes again, the records held back are written, in order.
    monkeypatch.setattr(log, "_write", real)
    await log.flush()
    rows = await app[DATABASE].fetchall("SELECT action, status FROM audit_log ORDER BY seq")
    assert [r["action"] for r in rows][-2:] == ["manifest.push", "chains.create_chain"]




async def test_waiters_are_answered_by_one_write_for_many_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Group commit: records awaited together are written together, without the interval."""
    from proxy.audit import AuditEvent, AuditLog
    db = metadata_database(tmp_path / "a.db")
    await db.open()
    log = AuditLog(db, flush_interval=5)  # the interval would make this test time out
    await log.start()
    writes: list[int] = []
    real = log._write

    async def counted(batch):
        writes.append(len(batch))
        await real(batch)

    monkeypatch.setattr(log, "_write", counted)
    tickets = [log.record(AuditEvent(action="manifest.push", outcome="success", reference=str(i)))
               for i in range(100)]
    assert all(await asyncio.gather(*(log.durable(t, timeout=4) for t in tickets)))
    assert writes == [100]
    row = await db.fetchone("SELECT COUNT(*) AS n FROM audit_log")
    assert row["n"] == 100
    await log.close()
    await db.close()


async def test_a_backlog_larger_than_one_write_is_written_in_order(tmp_path: Path):
    from proxy.audit import AuditEvent, AuditLog, verify_chain
    db = metadata_database(tmp_path / "a.db")
    await db.open()
    log = AuditLog(db, flush_interval=5, batch_size=10_000)
    await log.start()
    tickets = [log.record(AuditEvent(action="blob.push", outcome="success", reference=str(i))) for i in range(4500)]
    assert await log.durable(tickets[-1], timeout=20)
    rows = await db.fetchall("SELECT reference FROM audit_log ORDER BY seq")
    assert [r["reference"] for r in rows] == [str(i) for i in range(4500)]
    result = await verify_chain(db)
    assert result.ok and result.records == 4500
    await log.close()
    await db.close()
