"""Console sessions: an opaque cookie naming a server-side record, with a CSRF token.

A session is created before sign-in (the sign-in form needs a CSRF token too) and replaced
by a fresh one when the user signs in, so a session id planted before sign-in is worthless.
It ends after ``idle`` seconds without a request, at sign-out, and as soon as the account
is disabled, removed or its password changes (checked on every request). Sessions are
valid only on ``/ui``: the API and ``/v2`` never read the cookie."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Session", "SessionStore", "COOKIE"]

COOKIE = "algomint_console"
_MAX_SIGNED_IN = 50_000
_MAX_ANONYMOUS = 10_000  # sessions before sign-in (the sign-in form's CSRF token), kept apart


@dataclass
class Session:
    id: str
    csrf: str
    last_seen: float
    user: str | None = None  # None: not signed in (yet)
    fingerprint: str | None = None  # of the password hash at sign-in
    flash: list[str] = field(default_factory=list)

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class SessionStore:
    """In-memory sessions (a restart signs everyone out), oldest dropped past a cap.

    Sessions opened before sign-in live in their own, smaller pool: anyone can open them
    without credentials, so a flood of them must never push out a signed-in session."""

    def __init__(self, idle: float, clock: Callable[[], float] = time.monotonic,
                 max_signed_in: int = _MAX_SIGNED_IN, max_anonymous: int = _MAX_ANONYMOUS) -> None:
        self.idle = idle
        self._clock = clock
        self._signed_in: OrderedDict[str, Session] = OrderedDict()
        self._anonymous: OrderedDict[str, Session] = OrderedDict()
        self._max_signed_in, self._max_anonymous = max_signed_in, max_anonymous

    def new(self, user: str | None = None, fingerprint: str | None = None) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), self._clock(), user, fingerprint)
        pool, cap = (self._signed_in, self._max_signed_in) if user is not None else (self._anonymous,
                                                                                       self._max_anonymous)
        pool[session.id] = session
        while len(pool) > cap:
            pool.popitem(last=False)
        return session

    def get(self, session_id: str | None, touch: bool = True) -> Session | None:
        """The live session for a cookie value, its idle clock restarted unless ``touch`` is
        false (a page polling for progress is not someone using the console); None when
        unknown or idle too long."""
        if not session_id:
            return None
        pool = self._signed_in if session_id in self._signed_in else self._anonymous
        session = pool.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self.idle:
            del pool[session_id]
            return None
        if touch:
            session.last_seen = now
            pool.move_to_end(session_id)
        return session

    def end(self, session_id: str) -> None:
        self._signed_in.pop(session_id, None)
        self._anonymous.pop(session_id, None)
