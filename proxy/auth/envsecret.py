"""Taking a secret out of the process environment once it has been read.

``os.environ.pop`` alone is not enough: ``/proc/<pid>/environ`` shows the environment block
the process started with, which ``unsetenv`` leaves in memory. The value is overwritten in
place first, so neither a later reader of that file nor a child process can find it."""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["take_env_secret"]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_void_p
        libc.getenv.argtypes = [ctypes.c_char_p]
        libc.strlen.restype = ctypes.c_size_t
        libc.strlen.argtypes = [ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def take_env_secret(name: str) -> str | None:
    """The value of ``name`` (None if unset), now erased from the process environment."""
    value = os.environ.get(name)
    if _LIBC is not None:
        pointer = _LIBC.getenv(name.encode())
        if pointer:
            ctypes.memset(pointer, 0, _LIBC.strlen(pointer))
    os.environ.pop(name, None)  # also unsetenv: no child inherits it
    return value
