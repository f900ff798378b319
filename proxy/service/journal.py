"""The manifest change journal: what happens after a manifest write survives a crash.

A manifest lands in the backend first; the referrers index and the events that drive
assembly and webhooks follow. A crash in between would lose those quietly, so each
change is written here before the backend is touched and removed once its follow-up is
done. At start-up, changes still pending are checked against the backend and finished
(``RegistryService.replay_changes``): the ones that took effect get their follow-up, the
others are dropped. Follow-ups are idempotent, so a replay after a crash that struck
just before the removal only repeats work (at-least-once, as webhooks promise).

Replicas share the journal: with ``leases``, each change is leased to the replica making
it (in the transaction that records it), and only changes whose lease has expired — their
replica died mid-change — are replayed, each by the one replica that claims it. A
replica starting never finishes another live replica's change in flight, and the heartbeat
renews a change's lease for as long as the change is in flight, however slow the backend.

On PostgreSQL a change and its lease are written, and removed, by one statement each
(data-modifying ``WITH``): one round trip instead of a write transaction's four, and
outside the store's write lock, which they do not need. A single statement is atomic,
so no reader sees a change without its lease; the change's id is new (nobody else can
write its rows before it commits); removing it touches only its own two rows, and a
replica replaying it meanwhile finishes it idempotently, as it would after the lock."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

from ..cluster.leases import Leases
from ..meta import Database

__all__ = ["SCHEMA", "Change", "ChangeJournal", "LEASE"]

LEASE = "manifest_change"

log = logging.getLogger(__name__)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS manifest_changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        op TEXT NOT NULL CHECK (op IN ('put', 'delete')),
        repo TEXT NOT NULL,
        reference TEXT NOT NULL,
        digest TEXT,
        actor TEXT,
        created REAL NOT NULL
    )""",
]


@dataclass(frozen=True)
class Change:
    id: int
    op: Literal["put", "delete"]
    repo: str
    reference: str  # the tag or digest the client named
    digest: str | None  # what a put stored
    actor: str | None


class ChangeJournal:
    def __init__(self, db: Database, leases: Leases | None = None) -> None:
        self.db = db
        self.leases = leases

    async def begin(
        self, op: Literal["put", "delete"], repo: str, reference: str, digest: str | None, actor: str | None
    ) -> int:
        values = (op, repo, reference, digest, actor, time.time())
        if self.leases is not None and self.db.dialect == "postgres":
            row = await self.db.fetchone(
                "WITH c AS (INSERT INTO manifest_changes (op, repo, reference, digest, actor, created)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id),"
                " l AS (INSERT INTO leases (kind, id, owner, until) SELECT ?, CAST(id AS TEXT), ?, ? FROM c)"
                " SELECT id FROM c",
                (*values, LEASE, self.leases.owner, self.leases.expiry()))
        else:
            async with self.db.transaction() as tx:
                row = await tx.fetchone(
                    "INSERT INTO manifest_changes (op, repo, reference, digest, actor, created)"
                    " VALUES (?, ?, ?, ?, ?, ?) RETURNING id", values)
                assert row is not None
                if self.leases is not None:  # in the same transaction: never a change without its lease
                    await self.leases.take_new(tx, LEASE, str(row["id"]))
        assert row is not None
        change_id = int(row["id"])
        if self.leases is not None:
            self.leases.watch(LEASE, str(change_id), lambda: log.warning(
                "a manifest change in flight was taken over by another replica (this replica stalled past"
                " the lease); its follow-up may run twice", extra={"change": change_id}))
        return change_id

    async def end(self, change_id: int) -> None:
        if self.leases is None:
            await self.db.execute("DELETE FROM manifest_changes WHERE id = ?", (change_id,))
            return
        self.leases.unwatch(LEASE, str(change_id))
        if self.db.dialect == "postgres":
            await self.db.execute("WITH c AS (DELETE FROM manifest_changes WHERE id = ?)"
                                  " DELETE FROM leases WHERE kind = ? AND id = ?", (change_id, LEASE, str(change_id)))
            return
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM manifest_changes WHERE id = ?", (change_id,))
            await tx.execute("DELETE FROM leases WHERE kind = ? AND id = ?", (LEASE, str(change_id)))

    async def claim(self, change_id: int) -> bool:
        """Take a pending change to replay it (always, without leases)."""
        if self.leases is None:
            return True
        async with self.db.transaction() as tx:
            return await self.leases.claim(tx, LEASE, str(change_id)) is not False

    async def pending(self, *, own: bool = True) -> list[Change]:
        """Changes left unfinished: with leases, those whose replica stopped renewing, and
        with ``own`` this replica's too (at start-up it has none in flight)."""
        if self.leases is None:
            rows = await self.db.fetchall("SELECT * FROM manifest_changes ORDER BY id")
        else:
            others = " AND l.owner <> ?" if own else ""
            rows = await self.db.fetchall(
                "SELECT * FROM manifest_changes c WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.kind = ?"
                " AND l.id = CAST(c.id AS TEXT) AND l.until >= ?" + others + ") ORDER BY c.id",
                (LEASE, self.leases.now(), *((self.leases.owner,) if own else ())))
        return [Change(r["id"], r["op"], r["repo"], r["reference"], r["digest"], r["actor"]) for r in rows]
