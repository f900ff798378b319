"""Run the app: listen, serve, drain in-flight requests on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import create_app
from .config import Config

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def _run(config: Config) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=config.server.shutdown_grace)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
    await site.start()
    log.info("listening", extra={"listen": config.server.listen, "backend": config.storage.backend})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight requests")
    # AppRunner.cleanup stops accepting, waits up to shutdown_timeout for handlers,
    # then runs cleanup_ctx (closing backend and metadata store).
    await runner.cleanup()
    log.info("stopped")


def serve(config: Config) -> None:
    asyncio.run(_run(config))
