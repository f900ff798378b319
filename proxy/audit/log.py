"""The audit log: records batched through a queue into the metadata store, and queries.

``record`` never waits: it appends to an in-memory batch and returns the record's ticket.
``durable(ticket)`` waits until that record is committed (and synced to disk, unless
``sync`` is off: then it survives a killed process but not a power cut); a response
that says a change happened is sent only after it (the ``audit_requests`` middleware).

One background task writes the batch, each write one transaction that extends the hash
chain (group commit). Replicas sharing the store append to the same chain: an append
that lost the race for the next ``seq`` to another replica is re-hashed and retried (on
PostgreSQL: written under the store's write lock, which reads the head and cannot lose
again). A record someone waits for is written at once, together with everything that
arrived meanwhile; under load, records arriving during one write form the next batch,
so batches grow with the load and the cost per record falls. Records nobody waits for
(pulls, downloads) wait up to ``flush_interval``, or ``batch_size`` records. ``close``
writes everything still pending, so a clean shutdown loses nothing; a failed write keeps
the batch and retries, and its waiters keep waiting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from ..auth.patterns import compile_pattern
from ..meta import Database, MetadataError
from .records import GENESIS, SCHEMA, AuditEvent, AuditRecord
from .verify import VerifyResult, verify_chain

__all__ = ["AuditLog", "AuditQuery"]

log = logging.getLogger(__name__)

_RETRY_DELAY = 1.0
# Appends lost in a row to other replicas before a write counts as failed.
_MAX_RACES = 50
# PostgreSQL: writes that go straight through the write lock after an append lost a race
# (other replicas are appending too; guessing the head would mostly cost a wasted trip).
_LOCKED_AFTER_RACE = 16
# Records per write: 16 parameters each stays under SQLite's 32766 bound parameters.
_MAX_WRITE = 2000
# A repository-pattern query scans at most this many rows per page (it filters in Python).
_SCAN_BUDGET = 20_000


@dataclass(frozen=True)
class AuditQuery:
    actor: str | None = None
    action: str | None = None  # exact, or a prefix ending in "*" ("users.*")
    repository: str | None = None  # a repository pattern (`*`, `**`)
    outcome: str | None = None
    since: str | None = None  # inclusive, canonical time form
    until: str | None = None  # exclusive


class AuditLog:
    def __init__(self, db: Database, *, enabled: bool = True, flush_interval: float = 0.05,
                 batch_size: int = 256, sync: bool = True) -> None:
        self.db = db
        self.enabled = enabled
        self.sync = sync  # fsync each write (survives a power cut), else a killed process only
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self._pending: list[AuditEvent] = []
        self._wake = asyncio.Event()
        self._now = asyncio.Event()  # write without waiting for the interval: full, or awaited
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Records submitted and written, in order: ticket n is durable once _written >= n.
        self._submitted = self._written = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._head: tuple[int, str] | None = None  # (seq, hash) of the last record written
        self._locked_writes = 0  # PostgreSQL: next writes to take the write lock at once

    # -- lifetime ---------------------------------------------------------------
    async def start(self) -> None:
        await self.db.migrate("audit", SCHEMA)
        self._task = asyncio.create_task(self._run(), name="audit-flusher")

    async def close(self) -> None:
        """Stop the background writer and write every pending record.

        The writer is asked to stop, not cancelled: a cancel landing inside a write
        transaction could leave it open."""
        self._closing = True
        self._wake.set()
        self._now.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()

    # -- writing ----------------------------------------------------------------
    def record(self, event: AuditEvent) -> int:
        """Queue ``event``; returns its ticket for ``durable`` (0 when the log is off)."""
        if not self.enabled:
            return 0
        self._pending.append(event)
        self._submitted += 1
        self._wake.set()
        if len(self._pending) >= self.batch_size:
            self._now.set()
        return self._submitted

    async def durable(self, ticket: int, timeout: float) -> bool:
        """Wait until record ``ticket`` (and so every earlier one) is on disk; False if
        that takes longer than ``timeout`` (the store is failing)."""
        if ticket <= self._written:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((ticket, waiter))
        self._now.set()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            if not waiter.done():
                waiter.cancel()
                self._waiters = [w for w in self._waiters if w[1] is not waiter]

    def _wake_waiters(self) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for ticket, waiter in self._waiters:
            if ticket <= self._written:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((ticket, waiter))
        self._waiters = still

    async def flush(self) -> None:
        """Write every record submitted so far (read-your-writes for queries and tests);
        records submitted meanwhile are left to the background writer."""
        target = self._submitted
        while self._written < target:
            await self._write_pending()

    async def _write_pending(self) -> None:
        """Write what is pending now as one transaction; what arrives meanwhile waits."""
        async with self._write_lock:
            batch, self._pending = self._pending[:_MAX_WRITE], self._pending[_MAX_WRITE:]
            self._now.clear()
            if self._pending:  # more than one write's worth: the next write follows at once
                self._wake.set()
                self._now.set()
            if not batch:
                return
            try:
                await self._write(batch)
            except BaseException:
                self._pending[:0] = batch  # keep order; nothing is dropped
                raise
            self._written += len(batch)
            self._wake_waiters()

    async def _write(self, batch: list[AuditEvent]) -> None:
        if self.db.dialect == "postgres":
            # First on the head this log wrote last: one round trip (one statement text
            # for every batch size, so nothing is prepared anew), no write lock. When
            # another replica appended since, ``seq`` collides (the primary key; a
            # concurrent insert of the same ``seq`` waits for the other one's commit,
            # then collides) and nothing is written; the batch then goes through the
            # write lock, which reads the true head and cannot lose a race.
            if self._locked_writes > 0:
                self._locked_writes -= 1
            elif self._head is not None:
                try:
                    rows, head = _chained(batch, self._head)
                    await self.db.executemany_atomic(*_row_inserts(rows))
                    self._head = head
                    return
                except MetadataError:
                    self._head = None
                    self._locked_writes = _LOCKED_AFTER_RACE
                except BaseException:
                    self._head = None
                    raise
            await self._write_shared(batch)
            return
        # The chain is extended from the head this log wrote last, hashed before the
        # transaction so the database's one writer is held only for the insert and the
        # synced commit. Several replicas append to one chain: when another one appended
        # meanwhile, the insert collides on ``seq`` (the primary key) and nothing is
        # written; the batch is re-hashed on the stored head and tried again at once.
        for _ in range(_MAX_RACES):
            if self._head is None:
                self._head = await self._stored_head()
            assumed = self._head
            try:
                await self._insert(batch, assumed)
                return
            except MetadataError:
                self._head = None
                if await self._stored_head() == assumed:
                    raise  # not a lost race: the store itself failed
            except BaseException:
                self._head = None
                raise
        raise MetadataError(f"audit: lost {_MAX_RACES} appends in a row to other writers")

    async def _stored_head(self) -> tuple[int, str]:
        head = await self.db.fetchone("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        return (head["seq"], head["hash"]) if head else (0, GENESIS)

    async def _insert(self, batch: list[AuditEvent], head: tuple[int, str]) -> None:
        rows, (seq, prev) = _chained(batch, head)
        columns = list(rows[0])
        placeholders = f"({', '.join('?' * len(columns))})"
        # One multi-row INSERT: atomic on its own, one round trip to the database.
        await self.db.execute_atomic(
            f"INSERT INTO audit_log ({', '.join(columns)}) VALUES {', '.join([placeholders] * len(rows))}",
            [row[c] for row in rows for c in columns], durable=self.sync)
        self._head = (seq, prev)

    async def _write_shared(self, batch: list[AuditEvent]) -> None:
        # Several replicas append to one chain: the head is read inside the store's
        # serialised write transaction, so no other writer extends it in between.
        async with self.db.transaction() as tx:
            head = await tx.fetchone("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            rows, (seq, prev) = _chained(batch, (head["seq"], head["hash"]) if head else (0, GENESIS))
            await tx.executemany(*_row_inserts(rows))
        self._head = (seq, prev)

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            if not self._now.is_set() and not self._closing:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._now.wait(), self.flush_interval)
            self._wake.clear()
            try:
                await self._write_pending()
            except MetadataError as exc:
                log.error("audit write failed; will retry", extra={"error": str(exc), "pending": len(self._pending)})
                self._wake.set()
                if not self._closing:
                    await asyncio.sleep(_RETRY_DELAY)

    # -- reading ----------------------------------------------------------------
    async def query(self, q: AuditQuery, limit: int, before: int | None = None) -> tuple[list[AuditRecord], int | None]:
        """Newest first, records with ``seq < before``; returns the page and the next ``before``."""
        await self.flush()
        where: list[str] = []
        params: list[Any] = []
        for column in ("actor", "outcome"):
            value = getattr(q, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if q.action is not None:
            if q.action.endswith("*"):
                where.append("action LIKE ? ESCAPE '\\'")
                params.append(_like_prefix(q.action[:-1]))
            else:
                where.append("action = ?")
                params.append(q.action)
        if q.since is not None:
            where.append("time >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append("time < ?")
            params.append(q.until)
        sql = f"SELECT * FROM audit_log WHERE {' AND '.join([*where, 'seq < ?'])} ORDER BY seq DESC LIMIT ?"
        cursor = before if before is not None else 2**63 - 1
        if q.repository is None:
            rows = await self.db.fetchall(sql, (*params, cursor, limit + 1))
            records = [AuditRecord.from_row(r) for r in rows[:limit]]
            return records, (records[-1].seq if len(rows) > limit else None)
        # Patterns aren't SQL: scan newest-first in chunks, filter, stop at a page or the budget.
        regex = compile_pattern(q.repository)
        found: list[AuditRecord] = []
        scanned, chunk = 0, max(limit * 4, 500)
        while True:
            rows = await self.db.fetchall(sql, (*params, cursor, chunk))
            for row in rows:
                cursor = row["seq"]
                scanned += 1
                if row["repository"] and regex.fullmatch(row["repository"]):
                    found.append(AuditRecord.from_row(row))
                    if len(found) == limit:
                        return found, cursor
            if len(rows) < chunk:
                return found, None
            if scanned >= _SCAN_BUDGET:
                return found, cursor  # a short page; the cursor continues the scan

    async def verify(self) -> VerifyResult:
        await self.flush()
        return await verify_chain(self.db)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _row_inserts(rows: list[dict[str, Any]]) -> tuple[str, list[list[Any]]]:
    """One single-row INSERT and every row's values, for ``executemany``."""
    columns = list(rows[0])
    return (f"INSERT INTO audit_log ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [[row[c] for c in columns] for row in rows])


def _chained(batch: list[AuditEvent], head: tuple[int, str]) -> tuple[list[dict[str, Any]], tuple[int, str]]:
    """The batch's rows, each hashed onto the one before from ``head``, and the new head."""
    seq, prev = head
    rows = []
    for event in batch:
        seq += 1
        row = event.row(seq, prev)
        prev = row["hash"]
        rows.append(row)
    return rows, (seq, prev)
