"""The manifest change journal: what happens after a manifest write survives a crash.

A manifest lands in the backend first; the referrers index and the events that drive
assembly and webhooks follow. A crash in between would lose those quietly, so each
change is written here before the backend is touched and removed once its follow-up is
done. At start-up, changes still pending are checked against the backend and finished
(``RegistryService.replay_changes``): the ones that took effect get their follow-up, the
others are dropped. Follow-ups are idempotent, so a replay after a crash that struck
just before the removal only repeats work (at-least-once, as webhooks promise)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from ..meta import Database

__all__ = ["SCHEMA", "Change", "ChangeJournal"]

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
    def __init__(self, db: Database) -> None:
        self.db = db

    async def begin(
        self, op: Literal["put", "delete"], repo: str, reference: str, digest: str | None, actor: str | None
    ) -> int:
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "INSERT INTO manifest_changes (op, repo, reference, digest, actor, created)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (op, repo, reference, digest, actor, time.time()),
            )
        assert row is not None
        return int(row["id"])

    async def end(self, change_id: int) -> None:
        await self.db.execute("DELETE FROM manifest_changes WHERE id = ?", (change_id,))

    async def pending(self) -> list[Change]:
        rows = await self.db.fetchall("SELECT * FROM manifest_changes ORDER BY id")
        return [Change(r["id"], r["op"], r["repo"], r["reference"], r["digest"], r["actor"]) for r in rows]
