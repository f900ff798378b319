"""Failed-login limits per user name and per client address (sliding window, in memory).

Only failures count. Once a key reaches its limit inside the window, further attempts
are refused before any password is checked, until the oldest failure leaves the window.
Keys are bounded (least recently failed dropped first) so a spray of made-up names
can't grow memory without bound."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Callable

__all__ = ["FailureLimiter"]

_MAX_KEYS = 100_000


class _Window:
    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float | None:
        times = self._failures.get(key)
        if times is None or len(times) < self.limit:
            return None
        wait = times[0] + self.window - now
        return wait if wait > 0 else None

    def fail(self, key: str, now: float) -> None:
        times = self._failures.pop(key, None) or deque(maxlen=self.limit)
        times.append(now)
        self._failures[key] = times  # most recent last
        while len(self._failures) > _MAX_KEYS:
            self._failures.popitem(last=False)


class FailureLimiter:
    def __init__(self, per_user: int, per_address: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._users = _Window(per_user, window)
        self._addresses = _Window(per_address, window)
        self._clock = clock

    def retry_after(self, user: str | None, address: str | None) -> float | None:
        """Seconds until another attempt is allowed, or None when it is allowed now."""
        now = self._clock()
        waits = [w for w in (
            self._users.retry_after(user, now) if user else None,
            self._addresses.retry_after(address, now) if address else None,
        ) if w is not None]
        return max(waits) if waits else None

    def failed(self, user: str | None, address: str | None) -> None:
        now = self._clock()
        if user:
            self._users.fail(user, now)
        if address:
            self._addresses.fail(address, now)
