"""glibc malloc settings for a long-running server: large buffers go back to the system.

glibc serves an allocation above its mmap threshold with a mapping of its own, returned
to the system on ``free``. The threshold starts at 128 KiB and rises to the size of any
such block freed (up to 32 MiB), after which blocks that size come from the heap of the
thread's arena and stay there once freed, fragmented between smaller blocks. A password
check (scrypt: 16 MiB, in a worker thread) then leaves up to 16 MiB behind in every
worker thread's arena: measured in the soak with auth on (``bench/soak.py``), RSS went
from 172 to 250 MiB and ``malloc_trim(0)`` gave 66 MiB of it back.

A fixed threshold (which turns the sliding one off) keeps such buffers mapped per use.
It also freezes the trim threshold at its 128 KiB start, so every free at the top of a
heap handed pages back and the next 1 MiB stream buffer faulted them in again: a 1 GiB
sealed layer measured in 0.82-0.87 s and 1.3 CPU-s, against 0.62-0.73 s and 1.0-1.1 with
the trim threshold at ``TRIM_THRESHOLD`` (in process). So that is fixed too; a heap's
free top beyond it is still returned at once, and all of it once quiet. 16 MiB rather
than more: at 32 MiB a gzip full build's peak RSS rose from 143 to 164 MiB, for no speed.
What smaller blocks leave free between live ones is handed back by ``malloc_trim`` once
the server has been quiet for a while (``trim_when_quiet``): after a 10-minute soak,
4 MiB of 88.
It is set at start unless ``MALLOC_MMAP_THRESHOLD_`` is in the environment (glibc reads
that itself: an operator's choice wins) or ``ALGOMINT_MALLOC_TUNE=0`` (glibc's sliding
threshold and no trimming, e.g. to compare). Elsewhere than glibc nothing is done."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from typing import Protocol

__all__ = ["MMAP_THRESHOLD", "QUIET_SECONDS", "TRIM_THRESHOLD", "malloc_trim", "trim_when_quiet", "tune_malloc"]

log = logging.getLogger(__name__)

# Above this, a block is a mapping of its own: scrypt's 16 MiB and the 8 MiB staging
# buffers of full builds; below it, the 1 MiB stream buffers stay on the heap (mapping
# them per use costs page faults: see docs/performance.md, full builds).
MMAP_THRESHOLD = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc malloc.h
# A heap keeps this much free at its top: a stream's buffers are reused, not faulted in.
TRIM_THRESHOLD = 16 * 1024 * 1024
_M_TRIM_THRESHOLD = -1


# No request for this long: memory malloc holds free goes back to the system.
QUIET_SECONDS = 10.0


def _libc_function(name: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):  # not glibc (musl has neither mallopt nor malloc_trim)
        return None


def _untuned() -> bool:
    return os.environ.get("ALGOMINT_MALLOC_TUNE") == "0"


def malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: free pages of every arena back to the system."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))


class _Requests(Protocol):
    count: int
    started: int

    async def wait_idle(self) -> None: ...


async def trim_when_quiet(requests: _Requests, quiet: float = QUIET_SECONDS,
                          trim: Callable[[], bool] = malloc_trim) -> None:
    """Once per quiet spell (no request in flight or started for ``quiet`` seconds after
    some were served), trim malloc's free memory, in a thread (it walks every arena)."""
    if _untuned():
        return
    trimmed_after = -1
    while True:
        await requests.wait_idle()
        seen = requests.started
        await asyncio.sleep(quiet)
        if requests.count == 0 and requests.started == seen and seen != trimmed_after:
            await asyncio.to_thread(trim)
            trimmed_after = seen


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold; True when it was set here."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or _untuned():
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD) refused: large buffers may stay in malloc's arenas")
        return False
    if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        log.warning("mallopt(M_TRIM_THRESHOLD) refused: stream buffers may be faulted in again and again")
    return True
