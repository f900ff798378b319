"""The embedded storage serves one process: a second ``serve`` on the same path is refused.

Upload sessions, the garbage collector's write fence and push pins live in the memory of
the process that owns the directory, so two processes on one ``storage.path`` would
collect each other's content in flight. An exclusive POSIX lock (``lockf``) on a file in
the directory, held while serving, makes a second process's start fail with a clear
message; the kernel drops it when the process dies, so a crash never leaves a stale
lock. The lock is per process, so one process may open the storage again (an app
restarted in place). Several replicas use the registry backend instead (its upload ids
are stateless)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["EmbeddedStorageLock", "StorageInUse", "LOCK_NAME"]

LOCK_NAME = ".algomint-serve.lock"


class StorageInUse(Exception):
    """Another process serves this embedded storage directory."""


class EmbeddedStorageLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, replica: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StorageInUse(
                f"{self.path.parent} is already served by {holder}: the embedded (filesystem) backend serves "
                "one process only; run several replicas with storage.backend = \"registry\"") from None
        line = f"replica {replica} (pid {os.getpid()})\n".encode()
        os.pwrite(fd, line.ljust(200), 0)  # fixed width: no longer line from before shows through
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
