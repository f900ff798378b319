"""Leases on background work, so several replicas share queues and a dead one loses nothing.

A replica claims a job (an assembly, a full build, a webhook delivery) by taking its
row in ``leases``: ``owner`` = the replica id, ``until`` = now + ``ttl``. The claim is
one conditional upsert — it succeeds only when no lease exists or the existing one has
expired — so it is atomic on SQLite (one writer) and on PostgreSQL (the conflicting row
is locked and its condition re-checked), without ``SKIP LOCKED``. While the replica
runs the job, one heartbeat statement every ``heartbeat`` seconds extends every lease
it holds; a job whose lease was taken over (the replica stalled past ``ttl``) is
cancelled here, and a replica that cannot reach the store for ``ttl`` stops its jobs
itself. A replica that dies simply stops renewing: once ``until`` passes, another
replica claims the job and runs it again from the start (every job is idempotent).
The final write of a job ``release``s its lease in the same transaction and is skipped
when the lease is no longer its own, so a job's outcome and event are recorded once.

A clean shutdown releases the replica's leases at once, so others resume its jobs
without waiting for expiry, and start-up takes nothing: a restarting replica never
steals a live replica's job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Awaitable, Callable, TypeVar

from ..meta import Database, MetadataError
from ..meta.db import Transaction

__all__ = ["SCHEMA", "Leases", "LeaseLost"]

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS leases (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        owner TEXT NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (kind, id)
    )""",
    "CREATE INDEX IF NOT EXISTS leases_owner ON leases (owner)",
]


class LeaseLost(Exception):
    """Another replica holds this job's lease now: this run's result is not recorded."""


def live(kind: str, id_sql: str) -> str:
    """SQL true when the job whose id is ``id_sql`` holds an unexpired lease; takes one
    parameter, the current time. ``kind`` is a constant of the caller, never input."""
    return f"EXISTS (SELECT 1 FROM leases l WHERE l.kind = '{kind}' AND l.id = {id_sql} AND l.until >= ?)"


class Leases:
    def __init__(self, db: Database, owner: str, ttl: float, heartbeat: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.owner = owner
        self.ttl = ttl
        self.heartbeat = heartbeat
        self._clock = clock
        self._held: dict[tuple[str, str], Callable[[], None]] = {}
        self._renewed = clock()
        self._task: asyncio.Task[None] | None = None

    live = staticmethod(live)

    def now(self) -> float:
        return self._clock()

    def expiry(self) -> float:
        """``until`` of a lease taken now."""
        return self._clock() + self.ttl

    # -- lifetime -----------------------------------------------------------------
    async def start(self) -> None:
        await self.db.migrate("leases", SCHEMA)
        self._renewed = self._clock()
        self._task = asyncio.create_task(self._beat(), name="lease-heartbeat")

    async def close(self) -> None:
        """Stop renewing and hand every lease back (callers stopped their jobs first)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(MetadataError):
            await self.db.execute("DELETE FROM leases WHERE owner = ?", (self.owner,))
        self._held.clear()

    # -- claiming -----------------------------------------------------------------
    async def claim(self, tx: Transaction, kind: str, job_id: str) -> str | None | bool:
        """Take ``kind``/``job_id`` inside ``tx``. Returns False when a live lease is
        someone else's; else the previous (expired) owner, or None if there was none."""
        now = self._clock()
        row = await tx.fetchone("SELECT owner, until FROM leases WHERE kind = ? AND id = ?", (kind, job_id))
        if row is not None and row["until"] >= now and row["owner"] != self.owner:
            return False
        taken = await tx.execute(
            "INSERT INTO leases (kind, id, owner, until) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (kind, id) DO UPDATE SET owner = excluded.owner, until = excluded.until"
            " WHERE leases.until < ? OR leases.owner = excluded.owner",
            (kind, job_id, self.owner, now + self.ttl, now),
        )
        if not taken:
            return False
        return None if row is None else str(row["owner"])

    async def take_new(self, tx: Transaction, kind: str, job_id: str) -> None:
        """Lease a job created in ``tx`` itself (nobody else can hold it yet): one statement."""
        await tx.execute("INSERT INTO leases (kind, id, owner, until) VALUES (?, ?, ?, ?)",
                         (kind, job_id, self.owner, self.expiry()))

    async def release(self, tx: Transaction, kind: str, job_id: str) -> bool:
        """End the lease inside the transaction recording the job's outcome; False when
        it is not ours any more (the caller must then record nothing)."""
        self.unwatch(kind, job_id)  # finishing: the heartbeat no longer renews it
        return bool(await tx.execute("DELETE FROM leases WHERE kind = ? AND id = ? AND owner = ?",
                                     (kind, job_id, self.owner)))

    def watch(self, kind: str, job_id: str, on_lost: Callable[[], None]) -> None:
        """Have the heartbeat renew a lease this replica holds (``on_lost``: it was taken over)."""
        self._held[(kind, job_id)] = on_lost

    def unwatch(self, kind: str, job_id: str) -> None:
        self._held.pop((kind, job_id), None)

    async def run(self, kind: str, job_id: str, work: Awaitable[T]) -> T:
        """Run ``work`` while holding the lease; LeaseLost when the heartbeat finds the
        lease taken over (``work`` is cancelled). Cancelling the caller cancels ``work``."""
        task = asyncio.ensure_future(work)
        lost = False

        def on_lost() -> None:
            nonlocal lost
            lost = True
            task.cancel()

        self.watch(kind, job_id, on_lost)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if lost and not (current is not None and current.cancelling()):
                raise LeaseLost(f"{kind} {job_id}: lease taken over by another replica") from None
            raise
        finally:
            self.unwatch(kind, job_id)

    # -- heartbeat ----------------------------------------------------------------
    async def renew(self) -> None:
        """Extend every lease this replica holds, then stop the jobs whose lease is gone."""
        now = self._clock()
        held = list(self._held)  # claimed (committed) before the statements below run
        try:
            if held:
                # Only the jobs running here: a lease whose job ended without its final write
                # (the store failed) must expire, so another replica records the outcome.
                by_kind: dict[str, list[str]] = {}
                for kind, job_id in held:
                    by_kind.setdefault(kind, []).append(job_id)
                async with self.db.transaction() as tx:
                    for kind, ids in by_kind.items():
                        await tx.execute(
                            f"UPDATE leases SET until = ? WHERE owner = ? AND kind = ? AND id IN ({', '.join('?' * len(ids))})",
                            (now + self.ttl, self.owner, kind, *ids))
                rows = await self.db.fetchall("SELECT kind, id FROM leases WHERE owner = ?", (self.owner,))
                mine = {(r["kind"], r["id"]) for r in rows}
                for key in held:
                    if key not in mine and key in self._held:
                        log.warning("lease lost to another replica; job stopped", extra={"kind": key[0], "job": key[1]})
                        self._held.pop(key)()
            self._renewed = now
        except Exception as exc:  # noqa: BLE001 - the heartbeat must outlive any store failure
            if now - self._renewed > self.ttl and self._held:
                # Others may take these jobs over by now: stop, rather than run them twice.
                log.error("leases not renewed within their ttl; jobs stopped",
                          extra={"error": f"{type(exc).__name__}: {exc}", "jobs": len(self._held)})
                for key in list(self._held):
                    self._held.pop(key)()
            else:
                log.warning("lease renewal failed; will retry", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            await self.renew()
