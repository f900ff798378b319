"""The manifest change journal: a crash between storing a manifest and its follow-up
(referrers entry, ManifestStored/ManifestDeleted event) is finished at the next start."""

from __future__ import annotations

import json

import pytest

from proxy.app import BACKEND, create_app
from proxy.api.state import EVENTS, REGISTRY
from proxy.oci import mediatypes as mt
from proxy.service.events import ManifestDeleted, ManifestStored
from proxy.cluster.leases import SCHEMA as LEASES_SCHEMA
from proxy.cluster.leases import Leases
from proxy.service.journal import LEASE, SCHEMA, ChangeJournal
from tests.conftest import metadata_database
from tests.support.oci import descriptor, digest_of, image_manifest, push_blob, push_image


def referrer(subject: bytes) -> bytes:
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": descriptor(b"{}", mt.OCI_EMPTY),
        "layers": [descriptor(b"{}", mt.OCI_EMPTY)],
        "subject": descriptor(subject, mt.OCI_MANIFEST),
    }).encode()


async def crash_after_backend_put(app, repo: str, reference: str, data: bytes) -> str:
    """What a crash right after the backend stored a manifest leaves: the journal entry
    and the manifest, without the follow-up."""
    digest = digest_of(data)
    await app[REGISTRY].journal.begin("put", repo, reference, digest, "alice")
    await app[BACKEND].put_manifest(repo, reference, data, mt.OCI_MANIFEST, digest)
    return digest


async def restart(aiohttp_client, first, config):
    """Close ``first`` and start a new app on the same storage, recording its events."""
    await first.close()
    app = create_app(config)
    seen: list = []

    async def record(event) -> None:
        seen.append(event)

    app[EVENTS].subscribe(record)
    return await aiohttp_client(app), seen


async def test_interrupted_put_is_finished_at_start(aiohttp_client, config, repo):
    first = await aiohttp_client(create_app(config))
    subject_digest, subject = await push_image(first, repo, "v1", [b"base"])
    await push_blob(first, repo, b"{}")
    body = referrer(subject)
    digest = await crash_after_backend_put(first.server.app, repo, "sbom", body)

    client, seen = await restart(aiohttp_client, first, config)
    stored = [e for e in seen if isinstance(e, ManifestStored)]
    assert [(e.repo, e.tag, e.digest, e.actor) for e in stored] == [(repo, "sbom", digest, "alice")]
    resp = await client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert [m["digest"] for m in (await resp.json())["manifests"]] == [digest]
    assert await client.server.app[REGISTRY].journal.pending() == []


async def test_put_that_never_reached_the_backend_is_dropped(aiohttp_client, config, repo):
    first = await aiohttp_client(create_app(config))
    await push_image(first, repo, "v1", [b"base"])
    await first.server.app[REGISTRY].journal.begin("put", repo, "v2", digest_of(b"never stored"), None)

    client, seen = await restart(aiohttp_client, first, config)
    assert seen == []
    assert await client.server.app[REGISTRY].journal.pending() == []


async def test_replay_never_makes_an_older_push_the_latest(aiohttp_client, config, repo):
    client = await aiohttp_client(create_app(config))
    app = client.server.app
    await push_image(client, repo, "v1", [b"one"])
    older = image_manifest(b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}', [b"one"],
                           annotations={"push": "older"})
    digest = await crash_after_backend_put(app, repo, "v1", older)
    newer_digest, _ = await push_image(client, repo, "v1", [b"one"])  # moved on before the replay
    seen: list = []

    async def record(event) -> None:
        seen.append(event)

    app[EVENTS].subscribe(record)
    assert await app[REGISTRY].replay_changes() == 1
    assert [(e.digest, e.tag) for e in seen] == [(digest, None)]  # stored, but not as the tag's latest
    resp = await client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": mt.OCI_MANIFEST})
    assert resp.headers["Docker-Content-Digest"] == newer_digest


async def test_interrupted_delete_is_finished(aiohttp_client, config, repo):
    client = await aiohttp_client(create_app(config))
    app = client.server.app
    subject_digest, subject = await push_image(client, repo, "v1", [b"base"])
    await push_blob(client, repo, b"{}")
    body = referrer(subject)
    resp = await client.put(f"/v2/{repo}/manifests/{digest_of(body)}", data=body, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201
    # The crash: the backend deleted the referrer, the index and the event never heard.
    await app[REGISTRY].journal.begin("delete", repo, digest_of(body), None, "bob")
    await app[BACKEND].delete_manifest(repo, digest_of(body))
    seen: list = []

    async def record(event) -> None:
        seen.append(event)

    app[EVENTS].subscribe(record)
    assert await app[REGISTRY].replay_changes() == 1
    assert [(type(e), e.reference, e.actor) for e in seen] == [(ManifestDeleted, digest_of(body), "bob")]
    resp = await client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert (await resp.json())["manifests"] == []


async def test_a_refused_put_leaves_no_journal_entry(client, repo):
    await push_blob(client, repo, b"cfg")
    body = image_manifest(b"cfg", [b"missing layer"])
    resp = await client.put(f"/v2/{repo}/manifests/v1", data=body, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 400
    resp = await client.delete(f"/v2/{repo}/manifests/{digest_of(b'no such manifest')}")
    assert resp.status == 404
    assert await client.server.app[REGISTRY].journal.pending() == []


@pytest.fixture
async def db(tmp_path):
    """A bare metadata store (either kind) with the journal's and the leases' tables."""
    db = metadata_database(tmp_path / "meta.db")
    await db.open()
    try:
        await db.migrate("leases", LEASES_SCHEMA)
        await db.migrate("journal", SCHEMA)
        yield db
    finally:
        await db.close()


async def test_a_change_and_its_lease_are_written_and_removed_together(db):
    """Both stores (on PostgreSQL one statement each, outside the write lock): a change
    in flight is leased to its replica, hidden from every other replica's replay until
    the lease runs out, and ending it leaves neither row behind."""
    now = [1000.0]
    mine = ChangeJournal(db, Leases(db, "r1", ttl=30, heartbeat=10, clock=lambda: now[0]))
    other = ChangeJournal(db, Leases(db, "r2", ttl=30, heartbeat=10, clock=lambda: now[0]))
    first = await mine.begin("put", "images/a", "v1", "sha256:" + "a" * 64, "alice")
    second = await mine.begin("delete", "images/a", "v0", None, None)
    assert second > first
    leases = await db.fetchall("SELECT id, owner, until FROM leases WHERE kind = ? ORDER BY id", (LEASE,))
    assert [(r["id"], r["owner"], r["until"]) for r in leases] == [(str(first), "r1", 1030.0),
                                                                  (str(second), "r1", 1030.0)]
    assert await other.pending(own=False) == []
    await mine.end(first)
    now[0] = 1031.0  # r1 stopped renewing: its change left in flight is the other's to finish
    assert [(c.id, c.op, c.reference, c.digest) for c in await other.pending()] == [(second, "delete", "v0", None)]
    assert await other.claim(second) and not await mine.claim(second)
    await other.end(second)
    assert await db.fetchall("SELECT id FROM manifest_changes") == []
    assert await db.fetchall("SELECT id FROM leases") == []


async def test_a_slow_change_in_flight_is_not_replayed_by_another_replica(db):
    """The heartbeat renews the lease of a change in flight, however slow the backend."""
    now = [1_000.0]
    here = Leases(db, "replica-a", ttl=10, heartbeat=1, clock=lambda: now[0])
    there = Leases(db, "replica-b", ttl=10, heartbeat=1, clock=lambda: now[0])
    mine, theirs = ChangeJournal(db, here), ChangeJournal(db, there)

    change = await mine.begin("put", "team/app", "v1", "sha256:" + "a" * 64, "alice")
    # The backend takes three lease lifetimes; the heartbeat beats meanwhile.
    for _ in range(6):
        now[0] += 5
        await here.renew()
    assert await theirs.pending() == [], "another replica would replay a change still in flight"
    await mine.end(change)
    assert await db.fetchall("SELECT id FROM leases") == []

    # A replica that stops renewing (dead) loses its change to the others.
    lost = await mine.begin("put", "team/app", "v2", "sha256:" + "b" * 64, "alice")
    now[0] += 11
    assert [c.id for c in await theirs.pending()] == [lost]
    assert await theirs.claim(lost)
