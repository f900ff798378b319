"""The audit log: batched writes, nothing lost on close, queries, the hash chain and its
verification against edits, removals and reordering; and the records HTTP requests leave."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import uuid
from pathlib import Path

import pytest

from proxy.audit import AuditEvent, AuditLog, AuditQuery, verify_chain
from proxy.audit.records import GENESIS, record_hash
from proxy.meta import Database, MetadataError
from tests.conftest import metadata_database
from tests.support.auth import ADMIN, AuthEnv, auth_env, basic, seed_image  # noqa: F401
from tests.support.oci import digest_of, image_manifest
from tests.support.server import run_server


@pytest.fixture
async def db(tmp_path: Path):
    database = metadata_database(tmp_path / "audit.db")
    await database.open()
    yield database
    await database.close()


async def _filled(db: Database, n: int, **kwargs) -> AuditLog:
    log = AuditLog(db, **kwargs)
    await log.start()
    for i in range(n):
        log.record(AuditEvent(action="manifest.push", outcome="success", actor=f"user{i % 3}", actor_kind="user",
                              repository=f"generic/algo{i % 4}", reference=f"v{i}", status=201,
                              detail={"i": i}))
    await log.close()
    return log


def _tamper(path: Path, *statements: str) -> None:
    """Change the file the way someone with write access to it could (triggers dropped first)."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def _rehash(path: Path, seq: int) -> None:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    row = dict(conn.execute("SELECT * FROM audit_log WHERE seq = ?", (seq,)).fetchone())
    conn.execute("UPDATE audit_log SET hash = ? WHERE seq = ?", (record_hash(row), seq))
    conn.commit()
    conn.close()


async def test_close_writes_everything_in_order_as_one_chain(db: Database):
    await _filled(db, 1000, flush_interval=5, batch_size=10_000)  # nothing flushes before close
    rows = await db.fetchall("SELECT seq, prev_hash, hash, reference FROM audit_log ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, 1001))
    assert [r["reference"] for r in rows] == [f"v{i}" for i in range(1000)]
    assert rows[0]["prev_hash"] == GENESIS
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, 1000))
    result = await verify_chain(db)
    assert result.ok and result.records == 1000 and result.head_seq == 1000 and result.head_hash == rows[-1]["hash"]


async def test_a_full_batch_is_written_without_waiting_for_the_interval(db: Database):
    log = AuditLog(db, flush_interval=30, batch_size=5)
    await log.start()
    for i in range(5):
        log.record(AuditEvent(action="login", outcome="success", reference=str(i)))
    for _ in range(200):
        row = await db.fetchone("SELECT COUNT(*) AS n FROM audit_log")
        if row["n"] == 5:
            break
        await asyncio.sleep(0.01)
    assert row["n"] == 5
    await log.close()


async def test_a_failed_write_keeps_the_batch(db: Database, monkeypatch: pytest.MonkeyPatch):
    log = AuditLog(db, flush_interval=30)
    await log.start()
    log.record(AuditEvent(action="login", outcome="denied", reference="a"))
    real = log._write

    async def broken(batch):
        raise MetadataError("metadata store: disk I/O error")

    monkeypatch.setattr(log, "_write", broken)
    with pytest.raises(MetadataError):
        await log.flush()
    log.record(AuditEvent(action="login", outcome="denied", reference="b"))
    monkeypatch.setattr(log, "_write", real)
    await log.close()
    rows = await db.fetchall("SELECT reference FROM audit_log ORDER BY seq")
    assert [r["reference"] for r in rows] == ["a", "b"]


async def test_the_log_is_append_only(db: Database):
    await _filled(db, 3)
    with pytest.raises(MetadataError, match="append-only"):
        await db.execute("UPDATE audit_log SET actor = 'someone' WHERE seq = 2")
    with pytest.raises(MetadataError, match="append-only"):
        await db.execute("DELETE FROM audit_log WHERE seq = 2")


@pytest.mark.parametrize("case, seq, kind", [
    ("edited", 5, "altered"),
    ("edited-and-rehashed", 5, "altered"),
    ("deleted", 5, "removed"),
    ("deleted-and-renumbered", 5, "removed"),
    ("swapped", 5, "reordered"),
    ("first-deleted", 1, "removed"),
])
@pytest.mark.sqlite_only
async def test_verify_names_the_first_broken_record(db: Database, tmp_path: Path, case: str, seq: int, kind: str):
    await _filled(db, 12)
    path = tmp_path / "audit.db"
    await db.close()
    if case == "edited":
        _tamper(path, "UPDATE audit_log SET outcome = 'success', actor = 'someone-else' WHERE seq = 5")
    elif case == "edited-and-rehashed":
        _tamper(path, "UPDATE audit_log SET actor = 'someone-else' WHERE seq = 5")
        _rehash(path, 5)
    elif case == "deleted":
        _tamper(path, "DELETE FROM audit_log WHERE seq = 5")
    elif case == "deleted-and-renumbered":
        _tamper(path, "DELETE FROM audit_log WHERE seq = 5", "UPDATE audit_log SET seq = seq - 1 WHERE seq > 5")
    elif case == "swapped":
        _tamper(path, "UPDATE audit_log SET seq = -5 WHERE seq = 5", "UPDATE audit_log SET seq = 5 WHERE seq = 6",
                "UPDATE audit_log SET seq = 6 WHERE seq = -5")
    else:
        _tamper(path, "DELETE FROM audit_log WHERE seq = 1")
    await db.open()
    result = await verify_chain(db)
    assert not result.ok
    assert (result.problem.seq, result.problem.kind) == (seq, kind), result.problem
    assert result.records == seq - 1


@pytest.mark.sqlite_only
async def test_verify_with_an_anchor_catches_truncation(db: Database, tmp_path: Path):
    await _filled(db, 10)
    head = await verify_chain(db)
    assert (await verify_chain(db, (head.head_seq, head.head_hash))).ok
    await db.close()
    _tamper(tmp_path / "audit.db", "DELETE FROM audit_log WHERE seq > 8")
    await db.open()
    assert (await verify_chain(db)).ok  # a cut tail leaves a valid chain…
    result = await verify_chain(db, (head.head_seq, head.head_hash))
    assert not result.ok and result.problem.kind == "removed" and result.problem.seq == 10  # …the anchor doesn't


async def test_queries_filter_and_page(db: Database):
    log = await _filled(db, 40)
    q = AuditQuery(actor="user1")
    page, before = await log.query(q, limit=5)
    assert [r.reference for r in page] == [f"v{i}" for i in (37, 34, 31, 28, 25)]
    page2, _ = await log.query(q, limit=5, before=before)
    assert [r.reference for r in page2] == [f"v{i}" for i in (22, 19, 16, 13, 10)]
    page, _ = await log.query(AuditQuery(repository="generic/algo2"), limit=100)
    assert {r.reference for r in page} == {f"v{i}" for i in range(2, 40, 4)}
    page, _ = await log.query(AuditQuery(repository="generic/*", actor="user0"), limit=100)
    assert len(page) == 14
    page, _ = await log.query(AuditQuery(repository="images/**"), limit=100)
    assert page == []
    page, _ = await log.query(AuditQuery(action="manifest.*"), limit=100)
    assert len(page) == 40
    page, _ = await log.query(AuditQuery(action="manifest"), limit=100)
    assert page == []
    page, _ = await log.query(AuditQuery(outcome="denied"), limit=100)
    assert page == []
    everything, _ = await log.query(AuditQuery(), limit=100)
    middle = everything[20].time
    newer, _ = await log.query(AuditQuery(since=middle), limit=100)
    older, _ = await log.query(AuditQuery(until=middle), limit=100)
    assert len(newer) + len(older) == 40 and all(r.time >= middle for r in newer)
    assert everything[0].detail == {"i": 39}


# -- what HTTP requests leave in the log (both backends, auth on) ---------------------

async def _by_action(env: AuthEnv, **query: str) -> dict[str, dict]:
    return {r["action"]: r for r in reversed(await env.audit(**query))}


async def test_registry_mutations_and_business_pulls_are_recorded(auth_env: AuthEnv):
    client, uid = auth_env.client, uuid.uuid4().hex[:8]
    repo = f"generic/audit-{uid}"
    headers = {**basic("alg"), "User-Agent": "audit-test/1.0", "X-Request-Id": f"req-{uid}"}
    config, layer = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}', b"layer" + uid.encode()
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(config)}, data=config,
                             headers=headers)
    assert resp.status == 201
    # a chunked upload: the session steps are not recorded, the finished blob is
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", headers=basic("alg"))
    location = resp.headers["Location"]
    resp = await client.patch(location, data=layer, headers=basic("alg"))
    resp = await client.put(resp.headers["Location"], params={"digest": digest_of(layer)}, headers=basic("alg"))
    assert resp.status == 201
    manifest = image_manifest(config, [layer])
    resp = await client.put(f"/v2/{repo}/manifests/v1", data=manifest, headers={
        **basic("alg"), "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert resp.status == 201
    manifest_digest = resp.headers["Docker-Content-Digest"]
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", headers=basic("alg"))
    assert (await client.delete(resp.headers["Location"], headers=basic("alg"))).status == 204
    assert (await client.get(f"/v2/{repo}/manifests/v1", headers=basic("alg"))).status == 200  # not business: no record
    assert (await client.delete(f"/v2/{repo}/manifests/{manifest_digest}", headers=basic("alg"))).status == 202
    assert (await client.delete(f"/v2/{repo}/blobs/{digest_of(layer)}", headers=basic("alg"))).status in (202, 405)

    records = await auth_env.audit(repository=repo)
    actions = [r["action"] for r in reversed(records)]
    assert actions == ["blob.push", "blob.push", "manifest.push", "upload.cancel", "manifest.delete", "blob.delete"]
    first = records[-1]
    assert first["actor"] == "alg" and first["actor_kind"] == "user" and first["outcome"] == "success"
    assert first["status"] == 201 and first["digest"] == digest_of(config) and first["client"] == "127.0.0.1"
    assert first["user_agent"] == "audit-test/1.0" and first["request_id"] == f"req-{uid}"
    push = next(r for r in records if r["action"] == "manifest.push")
    assert push["reference"] == "v1" and push["digest"] == manifest_digest

    business = f"business/door-{uid}/face"
    digest = await seed_image(auth_env.app, business, "1.0")
    assert (await client.head(f"/v2/{business}/manifests/1.0", headers=basic("cons"))).status == 200
    assert (await client.get(f"/v2/{business}/manifests/1.0", headers=basic("cons"))).status == 200
    assert (await client.get(f"/v2/{business}/manifests/1.0", headers=basic("alg"))).status == 403
    pulls = await auth_env.audit(repository=business)
    assert [(r["actor"], r["outcome"], r["status"]) for r in pulls] == [("alg", "denied", 403), ("cons", "success", 200)]
    assert pulls[1]["action"] == "manifest.pull" and pulls[1]["digest"] == digest and pulls[1]["reference"] == "1.0"


async def test_archive_downloads_logins_and_management_are_recorded(auth_env: AuthEnv):
    client, uid = auth_env.client, uuid.uuid4().hex[:8]
    business = f"business/door-{uid}/face"
    await client.get(f"/api/v1/archive/{business}:1.0", headers=basic("cons"))
    records = await auth_env.audit(action="archive.download")
    assert records[0]["repository"] == business and records[0]["reference"] == "1.0"
    assert records[0]["actor"] == "cons"

    assert (await client.get("/token", headers=basic("biz"))).status == 200
    assert (await client.get("/token", headers=basic("biz", "wrong-password"))).status == 401
    logins = await auth_env.audit(actor="biz", action="login")
    assert [(r["outcome"], r["status"]) for r in logins[:2]] == [("denied", 401), ("success", 200)]

    resp = await client.post("/api/v1/users", json={"name": f"u{uid}", "kind": "robot"}, headers=basic(ADMIN))
    assert resp.status == 201
    assert (await client.post("/api/v1/users", json={"name": "x"}, headers=basic("cons"))).status == 403
    created = (await auth_env.audit(action="users.create"))
    assert [(r["actor"], r["outcome"], r["status"]) for r in created[:2]] == [("cons", "denied", 403),
                                                                              (ADMIN, "success", 201)]
    assert created[1]["detail"] == {"method": "POST", "path": "/api/v1/users"}
    # the log is consistent after all this
    resp = await client.post("/api/v1/audit/verify", headers=basic(ADMIN))
    assert resp.status == 200 and (await resp.json())["ok"] is True


async def test_audit_api_validates_its_query(auth_env: AuthEnv):
    for params in ({"outcome": "maybe"}, {"since": "yesterday"}, {"repository": "Bad//pattern"},
                   {"limit": "0"}, {"cursor": "%%%"}):
        resp = await auth_env.client.get("/api/v1/audit", params=params, headers=basic(ADMIN))
        assert resp.status == 400, params
        assert (await resp.json())["error"]["code"] == "invalid_request"
    resp = await auth_env.client.get("/api/v1/audit", params={"limit": "2"}, headers=basic(ADMIN))
    page = await resp.json()
    assert len(page["items"]) == 2 and page["next"]
    resp = await auth_env.client.get("/api/v1/audit", params={"limit": "2", "cursor": page["next"]},
                                     headers=basic(ADMIN))
    assert (await resp.json())["items"][0]["seq"] == page["items"][1]["seq"] - 1
    assert (await auth_env.client.get("/api/v1/audit", headers=basic("cons"))).status == 403


@pytest.mark.sqlite_only
def test_records_written_just_before_a_clean_shutdown_are_kept(tmp_path: Path):
    """SIGTERM with a long flush interval: the records still reach the database."""
    import urllib.request

    db_path = tmp_path / "metadata.db"
    config = (f'[storage]\npath = "{tmp_path / "storage"}"\n[metadata]\npath = "{db_path}"\n'
              '[audit]\nflush_interval = 5\nbatch_size = 10000\n')
    with run_server(tmp_path, config) as server:
        for i in range(20):
            data = f"blob {i}".encode()
            req = urllib.request.Request(f"{server.url}/v2/generic/shutdown/blobs/uploads/?digest={digest_of(data)}",
                                         data=data, method="POST")
            assert urllib.request.urlopen(req, timeout=10).status == 201
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(20) == 0, server.logs()
    conn = sqlite3.connect(db_path)
    count = conn.execute("SELECT COUNT(*) FROM audit_log WHERE action = 'blob.push'").fetchone()[0]
    conn.close()
    assert count == 20
