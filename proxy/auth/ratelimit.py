"""Failed password logins slow down, per (user name, client address); nothing locks.

A pair gets ``free`` failures; after that each attempt for the pair waits its turn: the
wait starts at ``base_delay`` and doubles with every further failure up to ``max_delay``,
and concurrent attempts are spaced by it, so a guesser gets at most one password check
per delay for that pair. The attempt is held, then checked — a right password still gets
in, late. Only when ``max_waiting`` attempts for the pair are already held is another one
refused (``429``); a success clears the pair, and failures are forgotten ``window``
seconds after the last one.

Why a pair and not a user or an address: a limit per user lets anyone lock a known user
out from anywhere, and a limit per address lets anyone lock out everyone behind the same
proxy. Keyed by the pair, failures only ever slow the same name from the same address.
API tokens and signed tokens are never throttled: they cannot be guessed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import AsyncIterator, Callable

__all__ = ["LoginThrottle", "Throttled"]

_MAX_KEYS = 100_000


class Throttled(Exception):
    """Too many attempts for this (user, address) are already waiting."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many attempts waiting")
        self.retry_after = retry_after


@dataclass
class _Pair:
    failures: int = 0
    last_failure: float = 0.0
    next_turn: float = 0.0  # when the next held attempt may be checked
    waiting: int = 0


class LoginThrottle:
    def __init__(self, free: int, base_delay: float, max_delay: float, window: float, max_waiting: int = 4,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.base_delay, self.max_delay, self.window = free, base_delay, max_delay, window
        self.max_waiting = max_waiting
        self._clock = clock
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()

    def delay(self, failures: int) -> float:
        """The spacing between checks after ``failures`` failures (0 while still free)."""
        if failures < self.free:
            return 0.0
        return min(self.base_delay * 2 ** (failures - self.free), self.max_delay)

    def _pair(self, user: str, address: str | None, now: float) -> _Pair | None:
        key = (user, address or "")
        pair = self._pairs.get(key)
        if pair is not None and pair.waiting == 0 and now - pair.last_failure > self.window:
            del self._pairs[key]
            return None
        return pair

    def reserve(self, user: str, address: str | None) -> tuple[float, _Pair | None]:
        """How long this attempt waits before its check (0: at once), and the pair it is
        counted on (pass it to ``release``); Throttled when the pair already has
        ``max_waiting`` attempts held."""
        now = self._clock()
        pair = self._pair(user, address, now)
        if pair is None:
            return 0.0, None
        if pair.failures < self.free:
            pair.waiting += 1
            return 0.0, pair
        if pair.waiting >= self.max_waiting:
            raise Throttled(max(pair.next_turn - now, self.delay(pair.failures)))
        turn = max(now, pair.next_turn)
        pair.next_turn = turn + self.delay(pair.failures)
        pair.waiting += 1
        return turn - now, pair

    @staticmethod
    def release(pair: _Pair | None) -> None:
        if pair is not None:
            pair.waiting -= 1

    def failed(self, user: str, address: str | None) -> None:
        now = self._clock()
        key = (user, address or "")
        pair = self._pair(user, address, now) or _Pair()
        pair.failures += 1
        pair.last_failure = now
        pair.next_turn = max(pair.next_turn, now + self.delay(pair.failures))
        self._pairs[key] = pair
        self._pairs.move_to_end(key)
        while len(self._pairs) > _MAX_KEYS:
            self._pairs.popitem(last=False)

    def succeeded(self, user: str, address: str | None) -> None:
        pair = self._pairs.get((user, address or ""))
        if pair is not None:
            pair.failures, pair.next_turn = 0, 0.0
            if pair.waiting == 0:
                del self._pairs[(user, address or "")]

    @contextlib.asynccontextmanager
    async def turn(self, user: str, address: str | None) -> AsyncIterator[None]:
        """Wait this attempt's turn (Throttled if too many are waiting), then run the check."""
        wait, pair = self.reserve(user, address)
        try:
            if wait > 0:
                await asyncio.sleep(wait)
            yield
        finally:
            self.release(pair)
