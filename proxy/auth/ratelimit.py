"""Failed password logins slow down, per (user name, client address); nothing locks.

A pair gets ``free`` failures; after that each attempt for the pair waits its turn: the
wait starts at ``base_delay`` and doubles with every further failure up to ``max_delay``,
and concurrent attempts are spaced by it, so a guesser gets at most one password check
per delay for that pair. The attempt is held, then checked — a right password still gets
in, late. Only when ``max_waiting`` attempts for the pair are already held by this
replica is another one refused (``429``); a success clears the pair, and failures are
forgotten ``window`` seconds after the last one.

Why a pair and not a user or an address: a limit per user lets anyone lock a known user
out from anywhere, and a limit per address lets anyone lock out everyone behind the same
proxy. Keyed by the pair, failures only ever slow the same name from the same address.
API tokens and signed tokens are never throttled: they cannot be guessed.

The counts and the next turn live in the metadata store (``login_failures``), shared by
every replica, so a guesser spreading attempts over replicas behind a load balancer is
spaced exactly as against one; times are wall-clock seconds, comparable across machines.
A pair without failures costs one indexed read per password login (which runs scrypt
anyway; a password checked moments ago skips the throttle, ``authenticator``); the turn
is taken with one atomic ``UPDATE … RETURNING``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from ..meta import Database

__all__ = ["SCHEMA", "Hold", "LoginThrottle", "Throttled", "migrate"]

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS login_failures (
        name TEXT NOT NULL,
        address TEXT NOT NULL,
        failures INTEGER NOT NULL,
        last_failure REAL NOT NULL,
        next_turn REAL NOT NULL,
        PRIMARY KEY (name, address)
    )""",
    "CREATE INDEX IF NOT EXISTS login_failures_last ON login_failures (last_failure)",
]

_PURGE_EVERY = 60.0  # seconds between removals of pairs past their window (per replica)


async def migrate(db: Database) -> None:
    await db.migrate("login_failures", SCHEMA)


class Throttled(Exception):
    """Too many attempts for this (user, address) are already waiting."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many attempts waiting")
        self.retry_after = retry_after


@dataclass
class Hold:
    key: tuple[str, str]
    known: bool  # the pair had failures on record: a success must clear them


class LoginThrottle:
    def __init__(self, db: Database, free: int, base_delay: float, max_delay: float, window: float,
                 max_waiting: int = 4, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.free, self.base_delay, self.max_delay, self.window = free, base_delay, max_delay, window
        self.max_waiting = max_waiting
        self._clock = clock
        self._waiting: dict[tuple[str, str], int] = {}  # attempts held by this replica
        self._purged = 0.0

    def delay(self, failures: int) -> float:
        """The spacing between checks after ``failures`` failures (0 while still free)."""
        if failures < self.free:
            return 0.0
        return min(self.base_delay * 2 ** (failures - self.free), self.max_delay)

    async def failures(self, user: str, address: str | None) -> int:
        """Failures on record for the pair within the window."""
        row = await self.db.fetchone("SELECT failures, last_failure FROM login_failures WHERE name = ? AND address = ?",
                                     (user, address or ""))
        return 0 if row is None or self._clock() - row["last_failure"] > self.window else int(row["failures"])

    async def reserve(self, user: str, address: str | None) -> tuple[float, Hold]:
        """How long this attempt waits before its check (0: at once), and its hold (pass
        it to ``release``); Throttled when this replica already holds ``max_waiting``
        attempts of the pair."""
        key = (user, address or "")
        now = self._clock()
        row = await self.db.fetchone(
            "SELECT failures, last_failure FROM login_failures WHERE name = ? AND address = ?", key)
        if row is None or now - row["last_failure"] > self.window:
            return 0.0, self._hold(key, known=row is not None)
        failures = int(row["failures"])
        if failures < self.free:
            return 0.0, self._hold(key, known=True)
        delay = self.delay(failures)
        if self._waiting.get(key, 0) >= self.max_waiting:
            raise Throttled(delay)
        hold = self._hold(key, known=True)  # counted before the next await: concurrent attempts see it
        try:
            async with self.db.transaction() as tx:
                # This attempt's turn: the later of now and the pair's next turn; the next one
                # is a delay after it. One statement, so replicas never hand out the same turn.
                taken = await tx.fetchone(
                    "UPDATE login_failures SET next_turn = (CASE WHEN next_turn > ? THEN next_turn ELSE ? END) + ?"
                    " WHERE name = ? AND address = ? RETURNING next_turn", (now, now, delay, *key))
        except BaseException:
            self.release(hold)
            raise
        turn = (taken["next_turn"] - delay) if taken is not None else now
        return max(0.0, turn - now), hold

    def _hold(self, key: tuple[str, str], known: bool) -> Hold:
        self._waiting[key] = self._waiting.get(key, 0) + 1
        return Hold(key, known)

    def release(self, hold: Hold) -> None:
        left = self._waiting.get(hold.key, 0) - 1
        if left > 0:
            self._waiting[hold.key] = left
        else:
            self._waiting.pop(hold.key, None)

    async def failed(self, user: str, address: str | None) -> None:
        now = self._clock()
        key = (user, address or "")
        async with self.db.transaction() as tx:
            # Failures older than the window start over at one.
            row = await tx.fetchone(
                "INSERT INTO login_failures (name, address, failures, last_failure, next_turn) VALUES (?, ?, 1, ?, 0)"
                " ON CONFLICT (name, address) DO UPDATE SET"
                " failures = CASE WHEN login_failures.last_failure < ? THEN 1 ELSE login_failures.failures + 1 END,"
                " next_turn = CASE WHEN login_failures.last_failure < ? THEN 0 ELSE login_failures.next_turn END,"
                " last_failure = excluded.last_failure RETURNING failures, next_turn",
                (*key, now, now - self.window, now - self.window))
            delay = self.delay(int(row["failures"])) if row is not None else 0.0
            if row is not None and delay > 0 and row["next_turn"] < now + delay:
                await tx.execute("UPDATE login_failures SET next_turn = ? WHERE name = ? AND address = ?",
                                 (now + delay, *key))
            if now - self._purged > _PURGE_EVERY:
                self._purged = now
                await tx.execute("DELETE FROM login_failures WHERE last_failure < ?", (now - self.window,))

    async def succeeded(self, hold: Hold) -> None:
        if hold.known:
            await self.db.execute("DELETE FROM login_failures WHERE name = ? AND address = ?", hold.key)

    @contextlib.asynccontextmanager
    async def turn(self, user: str, address: str | None) -> AsyncIterator[Hold]:
        """Wait this attempt's turn (Throttled if too many are waiting), then run the check."""
        wait, hold = await self.reserve(user, address)
        try:
            if wait > 0:
                await asyncio.sleep(wait)
            yield hold
        finally:
            self.release(hold)
