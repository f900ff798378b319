"""Memory snapshots for diagnosis, off unless ``ALGOMINT_TRACEMALLOC`` names a directory.

With it set, ``tracemalloc`` records allocations (10 frames each, which slows the server
down: diagnosis only) and a snapshot is written there every
``ALGOMINT_TRACEMALLOC_INTERVAL`` seconds (default 60) as ``snapshot-NNNN.pickle``;
``bench/soak.py`` diffs them (``tracemalloc.Snapshot.load`` + ``compare_to``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import tracemalloc
from pathlib import Path

__all__ = ["trace_memory"]

log = logging.getLogger(__name__)

DIR_ENV = "ALGOMINT_TRACEMALLOC"
INTERVAL_ENV = "ALGOMINT_TRACEMALLOC_INTERVAL"


def _dump(directory: Path, index: int) -> None:
    gc.collect()  # count what lives, not what waits for the cycle collector
    try:
        snapshot = tracemalloc.take_snapshot()
    except RuntimeError:  # tracing stopped meanwhile: the server is shutting down
        return
    snapshot = snapshot.filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
    snapshot.dump(str(directory / f"snapshot-{index:04d}.pickle"))


@contextlib.asynccontextmanager
async def trace_memory():
    """Around the server's life: snapshots while it runs, when the variable is set."""
    target = os.environ.get(DIR_ENV)
    if not target:
        yield
        return
    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    interval = float(os.environ.get(INTERVAL_ENV, "60"))
    tracemalloc.start(10)
    log.warning("tracemalloc on: snapshots every %.0f s in %s", interval, directory)

    async def loop() -> None:
        index = 0
        while True:
            await asyncio.to_thread(_dump, directory, index)
            index += 1
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        tracemalloc.stop()
