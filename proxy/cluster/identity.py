"""Which replica this process is: named in every log line and in ``algomint_replica_info``."""

from __future__ import annotations

import os
import re
import socket

__all__ = ["replica_id"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def replica_id(configured: str | None = None) -> str:
    """``[server] replica_id`` when set, else ``<hostname>-<pid>``: unique among live
    processes, and new after a restart (a restarted replica holds no old lease)."""
    if configured:
        return configured
    return f"{_UNSAFE.sub('-', socket.gethostname())[:48] or 'replica'}-{os.getpid()}"
