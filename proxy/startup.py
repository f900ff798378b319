"""Start-up failures: one exception type carrying the one line ``serve`` prints.

Anything that stops the service before it listens (a busy port, a chains file that does not
parse, a storage or metadata path that cannot be used) becomes a ``StartupError`` whose
message names the cause and the config key or file, so the operator sees no traceback."""

from __future__ import annotations

import os
import socket

__all__ = ["StartupError", "check_listen", "listen_error", "one_line"]


class StartupError(Exception):
    """The service could not start; ``str()`` is the one line to print."""


def one_line(exc: BaseException) -> str:
    """An exception's message as a single line (the first of its lines, never empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def listen_error(listen: str, exc: OSError) -> StartupError:
    if isinstance(exc, socket.gaierror):
        reason = exc.strerror or one_line(exc)
    else:
        reason = os.strerror(exc.errno).lower() if exc.errno else one_line(exc)
    return StartupError(f"server.listen {listen}: {reason}")


def check_listen(host: str, port: int, listen: str) -> None:
    """Bind the address once before anything else is loaded or started, so a taken port
    fails at once instead of after the storage, the database and the workers are up."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:  # taken, not an address of this host, or a name that does not resolve
        raise listen_error(listen, exc) from exc
