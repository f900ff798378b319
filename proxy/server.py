"""Run the app: listen (TLS when configured), serve, drain in-flight requests on
SIGTERM/SIGINT, re-read the TLS certificate on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .allocator import trim_when_quiet, tune_malloc
from .api.state import IN_FLIGHT
from .app import create_app
from .config import Config
from .memtrace import trace_memory
from .startup import StartupError, listen_error, one_line
from .tls import ServerTLS

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def _run(config: Config) -> None:
    server = config.server
    tls = ServerTLS(server.tls_cert, server.tls_key) if server.tls_cert and server.tls_key else None
    app = create_app(config)
    # aiohttp's keep-alive timer closes a connection that has not sent a complete
    # request head this long after it opened or after its last response, however
    # slowly bytes trickle in: the header timeout (bodies: ``api/slowclients.py``).
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=server.shutdown_grace,
        keepalive_timeout=server.header_timeout,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, server.host, server.port, reuse_address=True,
                           ssl_context=tls.context if tls else None)
        try:
            await site.start()
        except OSError as exc:  # taken since the check
            raise listen_error(server.listen, exc) from exc
    except Exception as exc:
        # Close what did start (database, workers), so the process ends instead of idling.
        await runner.cleanup()
        if isinstance(exc, StartupError):
            raise
        raise StartupError(f"{type(exc).__name__}: {one_line(exc)}") from exc
    log.info("listening", extra={"listen": server.listen, "tls": tls is not None, "backend": config.storage.backend})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if tls is not None:
        loop.add_signal_handler(signal.SIGHUP, tls.reload)
    trimmer = asyncio.create_task(trim_when_quiet(app[IN_FLIGHT]))
    await stop.wait()
    trimmer.cancel()
    grace = config.server.shutdown_grace
    log.info("shutting down: draining in-flight requests", extra={"in_flight": app[IN_FLIGHT].count})
    # Stop listening first, then let in-flight requests finish (uploads still receive
    # their bodies: aiohttp's own shutdown would stop reading them), then clean up.
    await site.stop()
    try:
        await asyncio.wait_for(app[IN_FLIGHT].wait_idle(), grace)
    except asyncio.TimeoutError:
        log.warning("shutdown grace expired", extra={"in_flight": app[IN_FLIGHT].count})
    await runner.cleanup()
    log.info("stopped")


async def _traced(config: Config) -> None:
    async with trace_memory():
        await _run(config)


def serve(config: Config) -> None:
    tune_malloc()
    asyncio.run(_traced(config))
