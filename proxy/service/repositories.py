"""The repository catalog algomint keeps for a registry backend, so a page costs a page.

distribution walks its catalog by path component (``a/x`` before ``a-b/x``), so its
``last`` cannot resume a page in string order, and reading its catalog whole for every
client page costs the whole catalog. Instead every repository a manifest PUT or DELETE
passes through is recorded here, and a background walk of upstream's catalog (at start
and every ``[storage] catalog_reconcile_interval`` seconds) adds what was pushed straight
to the backend and drops what is gone from it. Pages are then one indexed range query.

Until the first walk has finished, pages come from upstream's whole catalog as before,
so a fresh index never hides a repository. A registry without a catalog (Docker Hub,
some Harbor setups) has nothing to reconcile with: the index lists what algomint saw.

Portable SQL (``?`` placeholders, ``ON CONFLICT``): on PostgreSQL ``name`` needs the
``C`` collation, so that its order is the byte order the pages promise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..backend import Backend
from ..meta import Database, MetadataError
from ..oci.errors import Errors, RegistryError

__all__ = ["SCHEMA", "RepositoryCatalog"]

log = logging.getLogger(__name__)

SCHEMA = [
    # seen: when a push or a walk last saw the repository (a walk removes what it did
    # not see and nothing saw since it began). DOUBLE PRECISION: PostgreSQL's REAL is
    # 4 bytes, too coarse for Unix times; SQLite reads it as REAL.
    """CREATE TABLE IF NOT EXISTS catalog_repositories (
        name TEXT PRIMARY KEY,
        seen DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS catalog_walks (
        id INTEGER PRIMARY KEY,
        finished DOUBLE PRECISION NOT NULL,
        listed INTEGER NOT NULL
    )""",
]

_UPSERT = ("INSERT INTO catalog_repositories (name, seen) VALUES (?, ?) "
           "ON CONFLICT (name) DO UPDATE SET seen = excluded.seen")


def _after_prefix(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: none)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


class RepositoryCatalog:
    """Repository pages from the metadata store, reconciled with the backend's catalog."""

    def __init__(self, db: Database, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.backend = backend
        self._clock = clock
        self._reconciled = False
        self._walk_lock = asyncio.Lock()

    async def load(self) -> None:
        """Whether a walk has finished before (then pages come from the index at once)."""
        self._reconciled = await self.db.fetchone("SELECT finished FROM catalog_walks WHERE id = 1") is not None

    async def record(self, repo: str) -> None:
        """A manifest was stored in or deleted from ``repo``: it exists upstream (a
        repository stays listed when its last manifest goes, as in distribution)."""
        await self.db.execute_atomic(_UPSERT, (repo, self._clock()))

    async def page(self, n: int | None, last: str | None, prefix: str = "") -> tuple[list[str], bool]:
        if not self._reconciled:
            return await self.backend.repositories_page(n, last, prefix)
        params: list[object]
        if last and last >= prefix:
            sql, params = "SELECT name FROM catalog_repositories WHERE name > ?", [last]
        else:
            sql, params = "SELECT name FROM catalog_repositories WHERE name >= ?", [prefix]
        upper = _after_prefix(prefix)
        if upper is not None:
            sql += " AND name < ?"
            params.append(upper)
        sql += " ORDER BY name"
        if n is not None:
            sql += " LIMIT ?"
            params.append(n + 1)
        names = [row[0] for row in await self.db.fetchall(sql, params)]
        if n is None:
            return names, False
        return names[:n], len(names) > n

    async def reconcile(self) -> int:
        """Walk the backend's catalog once; returns how many repositories it listed."""
        async with self._walk_lock:
            started = self._clock()
            listed = 0
            try:
                async for names in self.backend.iter_repositories():
                    async with self.db.transaction() as tx:
                        await tx.executemany(_UPSERT, [(name, started) for name in names])
                    listed += len(names)
            except RegistryError as exc:
                if exc.error is not Errors.UNSUPPORTED:
                    raise
                # No catalog upstream: what passed through algomint is all there is to list.
                log.info("backend has no catalog: listing the repositories pushed through algomint")
            else:
                # Gone upstream and not seen by a push since the walk began.
                await self.db.execute("DELETE FROM catalog_repositories WHERE seen < ?", (started,))
            await self.db.execute(
                "INSERT INTO catalog_walks (id, finished, listed) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET finished = excluded.finished, listed = excluded.listed",
                (self._clock(), listed),
            )
            self._reconciled = True
            return listed

    async def run(self, interval: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Reconcile now and every ``interval`` seconds (0: only now); a failed walk is
        logged and tried again at the next turn (pages keep coming from the index)."""
        while True:
            try:
                listed = await self.reconcile()
                log.info("catalog reconciled with the backend", extra={"repositories": listed})
            except (RegistryError, MetadataError) as exc:
                log.warning("catalog walk failed", extra={"error": str(exc)})
            if interval <= 0:
                return
            await sleep(interval)
