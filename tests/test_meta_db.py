"""The metadata database keeps working after cancelled transactions."""

from __future__ import annotations

import asyncio

import pytest

from proxy.meta import MetadataError
from tests.conftest import metadata_database


@pytest.fixture
async def db(tmp_path):
    database = metadata_database(tmp_path / "m.db")
    await database.open()
    await database.migrate("test", ["CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)"])
    yield database
    await database.close()


async def test_commit_and_rollback(db):
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t VALUES ('a', 1)")
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('b', 2)")
            raise RuntimeError("abort")
    rows = await db.fetchall("SELECT k FROM t ORDER BY k")
    assert [r["k"] for r in rows] == ["a"]


async def test_constraint_errors_are_translated(db):
    await db.execute("INSERT INTO t VALUES ('a', 1)")
    with pytest.raises(MetadataError):
        await db.execute("INSERT INTO t VALUES ('a', 2)")
    await db.execute("INSERT INTO t VALUES ('b', 2)")  # the connection is still usable


@pytest.mark.parametrize("delay", [0, 0.0001, 0.001, 0.005])
async def test_cancelled_transactions_leave_nothing_open(db, delay):
    async def write(key: str) -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (?, 1)", (key,))
            await asyncio.sleep(0.001)
            await tx.execute("UPDATE t SET v = 2 WHERE k = ?", (key,))

    for i in range(20):
        task = asyncio.create_task(write(f"k{i}"))
        await asyncio.sleep(delay * (i % 5))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await write("after")
    rows = await db.fetchall("SELECT k, v FROM t")
    # Every row that exists was written completely; the last write went through.
    assert all(r["v"] == 2 for r in rows)
    assert "after" in {r["k"] for r in rows}
