"""Verifying the audit chain lets the event loop run between slices of records, so
``/healthz`` and every other request keep being answered during a long verify (the
figures: ``bench/bench_audit_verify.py``)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.audit import verify
from proxy.audit.records import record_hash
from proxy.audit.verify import _SLICE, verify_chain
from tests.test_audit import _filled, db  # noqa: F401 - fixture


async def test_verify_gives_the_loop_a_turn_every_slice(db, monkeypatch):  # noqa: F811
    records = 3000
    await _filled(db, records)
    hashed = 0

    def counting_hash(values):
        nonlocal hashed
        hashed += 1
        return record_hash(values)

    monkeypatch.setattr(verify, "record_hash", counting_hash)
    longest = 0
    done = False

    async def other_request() -> None:
        nonlocal longest
        seen = hashed
        while not done:
            await asyncio.sleep(0)
            longest = max(longest, hashed - seen)  # records hashed while this task waited
            seen = hashed

    task = asyncio.create_task(other_request())
    result = await verify.verify_chain(db)
    done = True
    await task
    assert result.ok and result.records == records and hashed == records
    assert 0 < longest <= verify._SLICE, longest


@pytest.mark.sqlite_only  # breaks the chain by editing the SQLite file
async def test_a_broken_record_inside_a_slice_is_still_named(db, tmp_path):  # noqa: F811
    import sqlite3

    await _filled(db, 100)
    await db.close()
    conn = sqlite3.connect(tmp_path / "audit.db")
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = ?", (_SLICE + 3,))
    conn.commit()
    conn.close()
    await db.open()
    result = await verify_chain(db)
    assert not result.ok and result.problem.seq == _SLICE + 3 and result.problem.kind == "altered"
    assert result.records == _SLICE + 2 and result.head_seq == _SLICE + 2
