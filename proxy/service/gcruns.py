"""Garbage collection runs: one at a time, on demand or on a schedule, each recorded.

A run record (table ``gc_runs``) holds who started it, whether it was a dry run, its
state (``running``, ``succeeded``, ``failed``) and the counts of ``gc.GcCounts``, updated
as it goes so ``GET /api/v1/gc/<id>`` shows progress. A run still ``running`` at start-up
was cut short by a stop and is marked failed. When a run ends, ``on_finish`` hears of it
(metrics, audit)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ..meta import Database
from .gc import Collector, GcCounts
from .policy import SYSTEM

__all__ = ["GcRun", "GcRuns", "GcBusy", "SCHEMA"]

log = logging.getLogger(__name__)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS gc_runs (
        id TEXT PRIMARY KEY,
        started_at REAL NOT NULL,
        finished_at REAL,
        status TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        trigger TEXT NOT NULL,
        actor TEXT NOT NULL,
        actor_kind TEXT NOT NULL,
        counts TEXT NOT NULL,
        error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS gc_runs_started ON gc_runs (started_at, id)",
]
# Progress is saved at most this often (seconds) while a run goes on.
_SAVE_EVERY = 1.0


class GcBusy(Exception):
    """A collection is already running."""

    def __init__(self, run: "GcRun") -> None:
        super().__init__(f"garbage collection {run.id} is already running")
        self.run = run


@dataclass
class GcRun:
    id: str
    started_at: float
    status: str
    dry_run: bool
    trigger: str  # "api" | "schedule"
    actor: str
    actor_kind: str  # the principal's kind ("system" for the schedule)
    counts: GcCounts
    finished_at: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        counts = self.counts.to_json()
        return {"id": self.id, "status": self.status, "dry_run": self.dry_run, "trigger": self.trigger,
                "actor": self.actor, "actor_kind": self.actor_kind, "started_at": self.started_at, "finished_at": self.finished_at,
                "phase": counts.pop("phase"), "counts": counts, "error": self.error}


def _run_of(row: Any) -> GcRun:
    counts = GcCounts(**json.loads(row["counts"]))
    return GcRun(row["id"], row["started_at"], row["status"], bool(row["dry_run"]), row["trigger"], row["actor"],
                 row["actor_kind"], counts, row["finished_at"], row["error"])


class GcRuns:
    def __init__(self, db: Database, collector: Collector | None, *,
                 on_finish: Callable[[GcRun], Awaitable[None] | None] | None = None) -> None:
        self.db = db
        self.collector = collector  # None: the backend collects its own garbage
        self.on_finish = on_finish
        self._current: GcRun | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.db.migrate("gc_runs", SCHEMA)
        await self.db.execute(
            "UPDATE gc_runs SET status = 'failed', error = 'interrupted by a stop', finished_at = ? "
            "WHERE status = 'running'", (time.time(),))

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def current(self) -> GcRun | None:
        return self._current

    async def begin(self, *, dry_run: bool, trigger: str, actor: str, actor_kind: str) -> GcRun:
        """Start a run in the background; ``GcBusy`` if one is running."""
        if self.collector is None:
            raise RuntimeError("this backend has no embedded garbage collector")
        if self._current is not None:
            raise GcBusy(self._current)
        run = GcRun(uuid.uuid4().hex, time.time(), "running", dry_run, trigger, actor, actor_kind, GcCounts())
        self._current = run
        try:
            await self._insert(run)
        except BaseException:
            self._current = None
            raise
        self._task = asyncio.create_task(self._execute(run))
        return run

    async def wait(self) -> None:
        """Until the run in progress (if any) ends."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def _execute(self, run: GcRun) -> None:
        assert self.collector is not None
        saver = asyncio.create_task(self._save_progress(run))
        try:
            await self.collector.run(dry_run=run.dry_run, counts=run.counts)
            run.status = "succeeded"
        except asyncio.CancelledError:
            run.status, run.error = "failed", "interrupted by a stop"
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the run and logged
            log.exception("garbage collection failed")
            run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"[:500]
        finally:
            saver.cancel()
            run.finished_at = time.time()
            self._current = None
            with contextlib.suppress(Exception):
                await asyncio.shield(self._update(run))
            if self.on_finish is not None:
                with contextlib.suppress(Exception):
                    result = self.on_finish(run)
                    if result is not None:
                        await result
            log.info("garbage collection finished", extra={"run": run.id, "status": run.status,
                                                            "dry_run": run.dry_run, **run.counts.to_json()})

    async def _save_progress(self, run: GcRun) -> None:
        while True:
            await asyncio.sleep(_SAVE_EVERY)
            with contextlib.suppress(Exception):
                await self._update(run)

    async def _insert(self, run: GcRun) -> None:
        await self.db.execute(
            "INSERT INTO gc_runs (id, started_at, status, dry_run, trigger, actor, actor_kind, counts) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (run.id, run.started_at, run.status, int(run.dry_run), run.trigger, run.actor, run.actor_kind,
             json.dumps(run.counts.to_json())))

    async def _update(self, run: GcRun) -> None:
        await self.db.execute(
            "UPDATE gc_runs SET status = ?, finished_at = ?, counts = ?, error = ? WHERE id = ?",
            (run.status, run.finished_at, json.dumps(run.counts.to_json()), run.error, run.id))

    async def get(self, run_id: str) -> GcRun | None:
        if self._current is not None and self._current.id == run_id:
            return self._current  # fresher than the last save
        row = await self.db.fetchone("SELECT * FROM gc_runs WHERE id = ?", (run_id,))
        return _run_of(row) if row else None

    async def list(self, limit: int, before: tuple[float, str] | None = None) -> list[GcRun]:
        if before is None:
            rows = await self.db.fetchall("SELECT * FROM gc_runs ORDER BY started_at DESC, id DESC LIMIT ?", (limit,))
        else:
            rows = await self.db.fetchall(
                "SELECT * FROM gc_runs WHERE (started_at, id) < (?, ?) ORDER BY started_at DESC, id DESC LIMIT ?",
                (before[0], before[1], limit))
        runs = [_run_of(row) for row in rows]
        current = self._current
        return [current if current is not None and r.id == current.id else r for r in runs]

    async def schedule(self, interval: float) -> None:
        """Run a collection every ``interval`` seconds (skipping a turn if one is running)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.begin(dry_run=False, trigger="schedule", actor=SYSTEM.name, actor_kind=SYSTEM.kind)
                await self.wait()
            except GcBusy:
                continue
            except Exception:  # noqa: BLE001 - the schedule must outlive a bad pass
                log.exception("scheduled garbage collection failed to start")
