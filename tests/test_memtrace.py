"""The memory-diagnosis hook: off by default, snapshots on disk when asked for."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import pytest

from proxy.memtrace import DIR_ENV, INTERVAL_ENV, trace_memory


async def test_off_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DIR_ENV, raising=False)
    async with trace_memory():
        assert not tracemalloc.is_tracing()


async def test_snapshots_while_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc already on in this process")
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "traces"))
    monkeypatch.setenv(INTERVAL_ENV, "0.05")
    async with trace_memory():
        assert tracemalloc.is_tracing()
        for _ in range(200):
            if len(list((tmp_path / "traces").glob("snapshot-*.pickle"))) >= 2:
                break
            await asyncio.sleep(0.05)
    assert not tracemalloc.is_tracing()
    snapshots = sorted((tmp_path / "traces").glob("snapshot-*.pickle"))
    assert len(snapshots) >= 2
    snapshot = tracemalloc.Snapshot.load(str(snapshots[0]))
    assert snapshot.traces and snapshot.traceback_limit == 10
