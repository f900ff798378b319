"""Shared version counters: a change one replica makes reaches every other within a poll.

Caches that other replicas' changes can invalidate (users, grants and API tokens; API
chains and the chains file) have a named counter in ``cluster_versions``. The change
bumps it in the transaction that makes it; every replica reads all counters with one
single-row-per-name query every ``poll_interval`` seconds and, when one moved, runs that
name's callbacks (drop the cache, reload). Polling, not LISTEN/NOTIFY: it works the
same on SQLite and PostgreSQL, and costs one indexed read per interval per replica.
A replica that cannot read the counters keeps polling; its caches still expire on
their own TTLs."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import Any, Awaitable, Callable

from ..meta import Database
from ..meta.db import Transaction

__all__ = ["SCHEMA", "VersionWatch", "bump", "migrate", "AUTH", "CHAINS", "MANIFESTS"]

log = logging.getLogger(__name__)

AUTH = "auth"  # users, grants, API tokens, passwords
CHAINS = "chains"  # API chains and the chains file
MANIFESTS = "manifests"  # a manifest deleted by digest (replicas cache manifests by digest)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS cluster_versions (
        name TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    )""",
]

Callback = Callable[[], Awaitable[Any] | Any]


async def migrate(db: Database) -> None:
    """Create the counters' table (every component that bumps calls this first)."""
    await db.migrate("cluster_versions", SCHEMA)


async def bump(tx: Transaction, name: str) -> None:
    """Tell every replica that ``name``'s state changed (inside the changing transaction)."""
    await tx.execute(
        "INSERT INTO cluster_versions (name, version) VALUES (?, 1)"
        " ON CONFLICT (name) DO UPDATE SET version = cluster_versions.version + 1",
        (name,),
    )


class VersionWatch:
    def __init__(self, db: Database, poll_interval: float) -> None:
        self.db = db
        self.poll_interval = poll_interval
        self._callbacks: dict[str, list[Callback]] = {}
        self._seen: dict[str, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def on_change(self, name: str, callback: Callback) -> None:
        self._callbacks.setdefault(name, []).append(callback)

    async def start(self) -> None:
        await migrate(self.db)
        self._seen = await self._read()
        self._task = asyncio.create_task(self._run(), name="cluster-versions")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _read(self) -> dict[str, int]:
        rows = await self.db.fetchall("SELECT name, version FROM cluster_versions")
        return {r["name"]: int(r["version"]) for r in rows}

    async def check(self) -> list[str]:
        """Read the counters once and run the callbacks of those that moved; returns their names."""
        now = await self._read()
        seen, self._seen = self._seen or {}, now
        moved = [name for name, version in now.items() if seen.get(name) != version]
        for name in moved:
            for callback in self._callbacks.get(name, []):
                try:
                    result = callback()
                    if inspect.isawaitable(result):
                        await result
                except Exception:  # noqa: BLE001 - one failing reload must not stop the others
                    log.exception("reacting to a change made elsewhere failed", extra={"state": name})
        return moved

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - the watch must outlive any store failure
                log.warning("shared versions unreadable", extra={"error": f"{type(exc).__name__}: {exc}"})
