"""Slow clients: a connection on which nothing moves for ``server.body_timeout`` is cut.

Request heads are bounded by aiohttp itself: its keep-alive timer, set to
``server.header_timeout`` (``server.py``), closes a connection that has not delivered a
complete request head that long after it opened or after its previous response; bytes
that trickle in do not extend it.

Bodies are watched here, per request, by a timer that looks every quarter of the
timeout: while the request body is still arriving, its byte count must move; while
response bytes wait in the transport's buffer for the client to take them, that buffer
must drain. A connection where neither moved for ``body_timeout`` is aborted: the
handler's pending read or write fails, and uploads clean up as for any disconnect.
Bodies sent from worker threads (``relay.py``) carry their own send timeout."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiohttp import web

from .state import CONFIG

__all__ = ["guard_slow_clients"]

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Watch:
    """The timer of one request."""

    def __init__(self, request: web.Request, timeout: float) -> None:
        self._request = request
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._last = (-1, -1)
        self._since = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(timeout / 4, self._tick)

    def _tick(self) -> None:
        request, transport = self._request, self._request.transport
        if transport is None or transport.is_closing():
            self._handle = None
            return
        content = request.content
        receiving = request.body_exists and not content.is_eof()
        queued = transport.get_write_buffer_size()
        now = self._loop.time()
        state = (content.total_bytes if receiving else -1, queued)
        if not (receiving or queued) or state != self._last:
            self._last, self._since = state, now  # moving, or not waiting on the client
        elif now - self._since >= self._timeout:
            log.warning("slow client cut off", extra={
                "path": request.path, "remote": request.remote,
                "waiting_for": "request body" if receiving else "the client to read",
                "seconds": round(now - self._since, 1),
            })
            transport.abort()
            self._handle = None
            return
        self._handle = self._loop.call_later(self._timeout / 4, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


@web.middleware
async def guard_slow_clients(request: web.Request, handler: Handler) -> web.StreamResponse:
    watch = _Watch(request, request.app[CONFIG].server.body_timeout)
    try:
        return await handler(request)
    finally:
        watch.stop()
