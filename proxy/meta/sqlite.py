"""The embedded metadata store: one SQLite file.

Writes are serialised by one connection (SQLite allows a single writer); WAL lets reads
run alongside.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Iterator, Sequence

import aiosqlite

from . import db

__all__ = ["SqliteDatabase"]

MetadataError = db.MetadataError

@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise MetadataError(f"metadata store: {exc}") from exc


class SqliteDatabase(db.Database):
    dialect = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.where = f"metadata.path {self.path}"
        self._conn: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with _translated():
            self._conn = await aiosqlite.connect(self.path, isolation_level=None)
            self._conn.row_factory = aiosqlite.Row
            await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute("PRAGMA synchronous=NORMAL")
            await self._conn.execute("PRAGMA foreign_keys=ON")
            await self._conn.execute("PRAGMA busy_timeout=5000")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise MetadataError("metadata store is not open")
        return self._conn

    def ddl(self, statement: db.Statement) -> str:
        return statement.sqlite if isinstance(statement, db.Dialects) else statement

    async def has_table(self, name: str) -> bool:
        return await self.fetchone("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)) is not None

    async def ping(self) -> None:
        await self.fetchone("SELECT 1")

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement in its own transaction; returns rows changed."""
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with _translated():
            async with self.conn.execute(sql, params) as cursor:
                return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with _translated():
            async with self.conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())

    async def execute_atomic(self, sql: str, params: Sequence[Any] = (), *, durable: bool = False) -> int:
        """One write statement as its own transaction, without ``BEGIN``/``COMMIT`` round
        trips (a single statement is atomic in SQLite); ``durable`` as in ``transaction``."""
        async with self._write_lock:
            with _translated():
                if self.conn.in_transaction:
                    await self.conn.rollback()  # what a cancelled transaction may have left open
                if durable:
                    await self.conn.execute("PRAGMA synchronous=FULL")
                try:
                    cursor = await self.conn.execute(sql, params)
                    count = cursor.rowcount
                    await cursor.close()
                    return count
                finally:
                    if durable:
                        await asyncio.shield(self.conn.execute("PRAGMA synchronous=NORMAL"))

    async def executemany_atomic(self, sql: str, rows: Iterable[Sequence[Any]], *, durable: bool = False) -> None:
        async with self.transaction(durable=durable) as tx:
            await tx.executemany(sql, rows)

    @contextlib.asynccontextmanager
    async def transaction(self, *, durable: bool = False) -> AsyncIterator["_Transaction"]:
        """An immediate (write) transaction: commits on success, rolls back on error.

        ``durable`` syncs the commit to disk before returning (``synchronous=FULL`` for
        this transaction): the default survives a killed process, not a power cut, which
        is enough for most metadata but not for a record that acknowledges a change.

        Cancellation can strike at any await; BEGIN, COMMIT and ROLLBACK still run in
        the connection's thread, so the end of a transaction is shielded and a new one
        first clears whatever a cancelled one may have left open."""
        async with self._write_lock:
            try:
                with _translated():
                    if self.conn.in_transaction:
                        await self.conn.rollback()
                    if durable:
                        await self.conn.execute("PRAGMA synchronous=FULL")
                    await self.conn.execute("BEGIN IMMEDIATE")
                yield _Transaction(self.conn)
            except BaseException:
                await asyncio.shield(self._end(commit=False, durable=durable))
                raise
            else:
                await asyncio.shield(self._end(commit=True, durable=durable))

    async def _end(self, *, commit: bool, durable: bool) -> None:
        with _translated():
            try:
                await (self.conn.commit() if commit else self.conn.rollback())
            finally:
                if durable:
                    await self.conn.execute("PRAGMA synchronous=NORMAL")


class _Transaction(db.Transaction):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with _translated():
            cursor = await self._conn.execute(sql, params)
            count = cursor.rowcount
            await cursor.close()
            return count

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with _translated():
            await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with _translated():
            async with self._conn.execute(sql, params) as cursor:
                return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with _translated():
            async with self._conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
