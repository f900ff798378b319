"""The repository names console listings page through, kept in memory.

Walking the storage for every page costs time in proportion to every repository there is
(about half a second at 10 000). The console keeps the sorted names instead: loaded
once at start-up, a name added the moment a manifest is stored (the registry's events),
and the whole list re-read after a delete and every ``refresh`` seconds, which also
catches writes made to a shared backing registry behind algomint's back. A page is then
a bisect and a slice, whatever the total."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from typing import AsyncIterator, Awaitable, Callable, Iterator

from ..service.events import Event, ManifestDeleted, ManifestStored

__all__ = ["RepositoryIndex"]

log = logging.getLogger(__name__)


class RepositoryIndex:
    def __init__(self, load: Callable[[], Awaitable[list[str]]], refresh: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self.refresh = refresh
        self._clock = clock
        self._names: list[str] | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()
        self._reload: asyncio.Task[None] | None = None
        self._added_since: set[str] = set()  # stored while a listing runs

    async def _reload_now(self) -> None:
        async with self._lock:
            started = self._clock()
            self._added_since = set()
            listed = await self._load()
            # Names stored while the listing ran are kept (the listing may have missed them).
            self._names, self._loaded_at = sorted(set(listed) | self._added_since), started

    async def names(self) -> list[str]:
        """The sorted names: fresh on first use, then served while a stale list is re-read."""
        if self._names is None:
            await self._reload_now()
        elif self._clock() - self._loaded_at > self.refresh:
            self._schedule()
        assert self._names is not None
        return self._names

    def _schedule(self) -> None:
        if self._reload is None or self._reload.done():
            self._reload = asyncio.create_task(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        try:
            await self._reload_now()
        except Exception:  # noqa: BLE001 - the previous list keeps serving
            log.warning("re-reading the repository list failed", exc_info=True)

    async def page(self, prefix: str, after: str | None) -> Iterator[str]:
        """Names starting with ``prefix``, in order, after ``after``."""
        names = await self.names()
        start = bisect.bisect_right(names, after) if after is not None and after >= prefix else \
            bisect.bisect_left(names, prefix)
        return _while_prefixed(names, start, prefix)

    async def on_event(self, event: Event) -> None:
        if isinstance(event, ManifestStored):
            self._added_since.add(event.repo)
            if self._names is not None:
                at = bisect.bisect_left(self._names, event.repo)
                if at == len(self._names) or self._names[at] != event.repo:
                    # A new list, never changed in place: a page being iterated keeps its own.
                    self._names = [*self._names[:at], event.repo, *self._names[at:]]
        elif isinstance(event, ManifestDeleted):
            self._loaded_at = -self.refresh - 1  # stale: the next page re-reads it
            self._schedule()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Load in the background from start-up; stop a reload still running at shutdown."""
        self._schedule()
        yield
        if self._reload is not None:
            self._reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload


def _while_prefixed(names: list[str], start: int, prefix: str) -> Iterator[str]:
    for i in range(start, len(names)):
        if not names[i].startswith(prefix):
            return
        yield names[i]
