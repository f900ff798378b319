"""The manifest change journal shared by replicas: a change in flight keeps its lease."""

from __future__ import annotations

from pathlib import Path

from proxy.cluster import leases as leases_module
from proxy.cluster.leases import Leases
from proxy.service import journal as journal_module
from proxy.service.journal import ChangeJournal
from tests.conftest import metadata_database


async def test_a_slow_change_in_flight_is_not_replayed_by_another_replica(tmp_path: Path) -> None:
    db = metadata_database(tmp_path / "meta.db")
    await db.open()
    try:
        await db.migrate("leases", leases_module.SCHEMA)
        await db.migrate("journal", journal_module.SCHEMA)
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
        assert await theirs.pending() == []

        # A replica that stops renewing (dead) loses its change to the others.
        lost = await mine.begin("put", "team/app", "v2", "sha256:" + "b" * 64, "alice")
        now[0] += 11
        assert [c.id for c in await theirs.pending()] == [lost]
        assert await theirs.claim(lost)
    finally:
        await db.close()
