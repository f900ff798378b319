"""The metadata store's interface, shared by its SQLite and PostgreSQL implementations.

Components own their tables: each declares versioned schemas (lists of statements, version
1 being the ``CREATE … IF NOT EXISTS`` list a database created before versioning already
has) and passes them to ``Database.migrate``. Component SQL is written once, portable to
both dialects: ``?`` placeholders, ``INSERT … ON CONFLICT``, ``RETURNING``, SQLite type
names (``INTEGER``/``REAL``/``BLOB``, mapped for PostgreSQL when tables are created); a
statement that cannot be portable (a trigger) is given per dialect with ``Dialects``.
"""

from __future__ import annotations

import abc
import time
from typing import Any, AsyncContextManager, Iterable, Literal, NamedTuple, Sequence

__all__ = ["Database", "Dialects", "MetadataError", "Row", "Statement", "Transaction"]

# ``row["col"]`` and ``row[0]`` on both (sqlite3.Row, asyncpg.Record).
Row = Any
Dialect = Literal["sqlite", "postgres"]


class MetadataError(Exception):
    """The metadata store failed (unreachable, disk full, locked, corrupt, a constraint)."""


class Dialects(NamedTuple):
    """One schema statement written for each dialect."""

    sqlite: str
    postgres: str


Statement = str | Dialects

_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (component, version)
)"""


class Transaction(abc.ABC):
    """Statements inside one ``Database.transaction()``."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...


class Database(abc.ABC):
    """Async metadata store. ``dialect`` is ``"sqlite"`` or ``"postgres"``; ``where`` names
    the store for messages (never with a password)."""

    dialect: Dialect
    where: str

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``MetadataError`` unless the store answers within a short timeout."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement in its own transaction; returns rows changed."""

    @abc.abstractmethod
    async def execute_atomic(self, sql: str, params: Sequence[Any] = (), *, durable: bool = False) -> int:
        """One write statement, atomic on its own, with the fewest round trips."""

    @abc.abstractmethod
    async def executemany_atomic(self, sql: str, rows: Iterable[Sequence[Any]], *, durable: bool = False) -> None:
        """One write statement run for each of ``rows``, all or none, with the fewest
        round trips (on PostgreSQL one, outside the write lock)."""

    @abc.abstractmethod
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    @abc.abstractmethod
    def transaction(self, *, durable: bool = False) -> AsyncContextManager[Transaction]:
        """A write transaction, serialised against every other one on this store (as
        SQLite's single writer does): commits on success, rolls back on error. ``durable``
        syncs the commit to disk on SQLite; every PostgreSQL commit is durable."""

    @abc.abstractmethod
    async def has_table(self, name: str) -> bool: ...

    @abc.abstractmethod
    def ddl(self, statement: Statement) -> str:
        """A schema statement as this dialect spells it."""

    async def migrate(self, component: str, *versions: Sequence[Statement]) -> None:
        """Bring ``component``'s tables to the last of ``versions`` (1-based), applying each
        missing version once, in order. The transaction's write lock (an advisory lock on
        PostgreSQL) makes replicas that start together apply each version exactly once."""
        async with self.transaction() as tx:
            await tx.execute(self.ddl(_MIGRATIONS_TABLE))
            row = await tx.fetchone("SELECT MAX(version) AS v FROM schema_migrations WHERE component = ?", (component,))
            done = row["v"] or 0
            for number, statements in enumerate(versions[done:], start=done + 1):
                for statement in statements:
                    await tx.execute(self.ddl(statement))
                await tx.execute("INSERT INTO schema_migrations (component, version, applied_at) VALUES (?, ?, ?)",
                                 (component, number, time.time()))

    async def migrations(self) -> dict[str, int]:
        """Each component's applied schema version."""
        if not await self.has_table("schema_migrations"):
            return {}
        rows = await self.fetchall("SELECT component, MAX(version) AS v FROM schema_migrations GROUP BY component")
        return {row["component"]: row["v"] for row in rows}
