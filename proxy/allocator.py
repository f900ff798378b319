"""glibc malloc settings for a long-running server: large buffers go back to the system.

glibc serves an allocation above its mmap threshold with a mapping of its own, returned
to the system on ``free``. The threshold starts at 128 KiB and rises to the size of any
such block freed (up to 32 MiB), after which blocks that size come from the heap of the
thread's arena and stay there once freed, fragmented between smaller blocks. A password
check (scrypt: 16 MiB, in a worker thread) then leaves up to 16 MiB behind in every
worker thread's arena: measured in the soak with auth on (``bench/soak.py``), RSS went
from 172 to 250 MiB and ``malloc_trim(0)`` gave 66 MiB of it back.

A fixed threshold (which turns the sliding one off) keeps such buffers mapped per use.
It is set at start unless ``MALLOC_MMAP_THRESHOLD_`` is in the environment (glibc reads
that itself: an operator's choice wins) or ``ALGOMINT_MALLOC_TUNE=0`` (glibc's sliding
threshold, e.g. to compare). Elsewhere than glibc nothing is done."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["MMAP_THRESHOLD", "tune_malloc"]

log = logging.getLogger(__name__)

# Above this, a block is a mapping of its own: scrypt's 16 MiB and the 8 MiB staging
# buffers of full builds; below it, the 1 MiB stream buffers stay on the heap (mapping
# them per use costs page faults: see docs/performance.md, full builds).
MMAP_THRESHOLD = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc malloc.h


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold; True when it was set here."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or os.environ.get("ALGOMINT_MALLOC_TUNE") == "0":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD) refused: large buffers may stay in malloc's arenas")
        return False
    return True
