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
_MAX_SESSIONS = 50_000


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
    """In-memory sessions (a restart signs everyone out), oldest dropped past a cap."""

    def __init__(self, idle: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle = idle
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def new(self, user: str | None = None, fingerprint: str | None = None) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), self._clock(), user, fingerprint)
        self._sessions[session.id] = session
        while len(self._sessions) > _MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None, touch: bool = True) -> Session | None:
        """The live session for a cookie value, its idle clock restarted unless ``touch`` is
        false (a page polling for progress is not someone using the console); None when
        unknown or idle too long."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self.idle:
            del self._sessions[session_id]
            return None
        if touch:
            session.last_seen = now
            self._sessions.move_to_end(session_id)
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
