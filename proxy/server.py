"""Run the app: listen, serve, drain in-flight requests on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from .api.state import IN_FLIGHT
from .app import create_app
from .config import Config
from .startup import StartupError, one_line

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def _run(config: Config) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=config.server.shutdown_grace)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:  # taken, or not an address of this host
            reason = os.strerror(exc.errno).lower() if exc.errno else one_line(exc)
            raise StartupError(f"server.listen {config.server.listen}: {reason}") from exc
    except Exception as exc:
        # Close what did start (database, workers), so the process ends instead of idling.
        await runner.cleanup()
        if isinstance(exc, StartupError):
            raise
        raise StartupError(f"{type(exc).__name__}: {one_line(exc)}") from exc
    log.info("listening", extra={"listen": config.server.listen, "backend": config.storage.backend})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
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


def serve(config: Config) -> None:
    asyncio.run(_run(config))
