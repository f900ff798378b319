"""Identical concurrent backend reads share one request, and nobody gets an answer older
than their own request.

A read of a key is first *pending*: callers that arrive join it, and it starts on the
next turn of the event loop, so a burst of requests for one manifest that arrive
together shares one backend request. A caller never joins a read that has already
started: it starts (or joins) a new pending one. Each answer therefore reflects the
backend at some instant between the caller's arrival and its answer, exactly as a read
of its own would (a moved tag is seen at once). At most ``limit`` reads of a key run at
a time; a pending read beyond that starts when one of them ends, answering everyone who
joined meanwhile. Distribution's pull-through proxy (``registry/proxy/proxyblobstore.go``)
de-duplicates in-flight fetches in the same spirit.

A caller that is cancelled leaves the shared read running for the others."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

__all__ = ["Flights"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class _Pending(Generic[V]):
    answer: asyncio.Future[V]
    fetch: Callable[[], Awaitable[V]]


class Flights(Generic[K, V]):
    """Coalesces concurrent ``fetch``es of one key; see the module docstring."""

    def __init__(self, limit: int = 4) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._running: dict[K, int] = {}
        self._pending: dict[K, _Pending[V]] = {}

    async def run(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        pending = self._pending.get(key)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self._pending[key] = _Pending(loop.create_future(), fetch)
            if self._running.get(key, 0) < self.limit:
                loop.call_soon(self._launch, key)
            # else: launched when one of the running reads of this key ends
        return await asyncio.shield(pending.answer)

    def _launch(self, key: K) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return  # a read that ended launched it already
        self._running[key] = self._running.get(key, 0) + 1
        task = asyncio.ensure_future(pending.fetch())
        task.add_done_callback(partial(self._finished, key, pending.answer))

    def _finished(self, key: K, answer: asyncio.Future[V], task: asyncio.Future[V]) -> None:
        left = self._running[key] - 1
        if left:
            self._running[key] = left
        else:
            del self._running[key]
        if task.cancelled():
            answer.cancel()
        elif task.exception() is not None:
            answer.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            answer.set_result(task.result())
        if key in self._pending:
            self._launch(key)
