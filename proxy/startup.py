"""Start-up failures: one exception type carrying the one line ``serve`` prints.

Anything that stops the service before it listens (a busy port, a chains file that does not
parse, a storage or metadata path that cannot be used) becomes a ``StartupError`` whose
message names the cause and the config key or file, so the operator sees no traceback."""

from __future__ import annotations

__all__ = ["StartupError", "one_line"]


class StartupError(Exception):
    """The service could not start; ``str()`` is the one line to print."""


def one_line(exc: BaseException) -> str:
    """An exception's message as a single line (the first of its lines, never empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
