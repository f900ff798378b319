"""Console sessions: an opaque cookie naming a record in the metadata database, with a CSRF token.

Signed-in sessions live in the shared metadata database (table ``console_sessions``), so
every replica behind a load balancer accepts them and a sign-out on one is refused by all
at once. Only a SHA-256 of the cookie value is stored: the cookie is the secret, and a
reader of the database cannot turn a row back into one.

Before sign-in (the sign-in form needs a CSRF token too) a session is stateless: the cookie
is a nonce and its issue time signed with a server secret shared through the database, and
its CSRF token is derived from the nonce. Anyone can open one, so they cost no row; any
replica verifies them. Sign-in replaces it with a fresh signed-in session, so a session id
planted before sign-in is worthless.

A session ends after ``idle`` seconds without a request, at sign-out, and as soon as the
account is disabled, removed or its password changes (checked on every request). Sessions
are valid only on ``/ui``: the API and ``/v2`` never read the cookie."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

from ..api.manage.cursors import load_secret
from ..meta import Database

__all__ = ["Session", "SessionStore", "COOKIE", "FLASH_COOKIE", "SCHEMA"]

COOKIE = "algomint_console"
FLASH_COOKIE = "algomint_flash"
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS console_sessions (
        id_hash TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created REAL NOT NULL,
        last_seen REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS console_sessions_user ON console_sessions (username, created)",
    "CREATE INDEX IF NOT EXISTS console_sessions_seen ON console_sessions (last_seen)",
]
_KEY_NAME = "console-session-key"
_ANONYMOUS = "a"  # prefix of a stateless pre-sign-in cookie
_MAX_COOKIE = 200  # longer cookie values are not ours: refused before any hashing or query
_MAX_PER_USER = 100  # signed-in sessions per account, oldest dropped: a credential cannot fill the table
_TOUCH_EVERY = 30.0  # seconds: last_seen is written at most this often per session
_SWEEP_EVERY = 60.0  # seconds between two deletions of idle rows by this process
_MAX_FLASH = 2048  # bytes of flash messages carried in their cookie (browsers keep ~4 KiB)


@dataclass
class Session:
    id: str  # the cookie value
    csrf: str
    last_seen: float
    user: str | None = None  # None: not signed in (yet)
    fingerprint: str | None = None  # of the password hash at sign-in
    flash: list[str] = field(default_factory=list)

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Signed-in sessions in the metadata database; pre-sign-in ones signed, never stored."""

    def __init__(self, db: Database, key: bytes, idle: float, clock: Callable[[], float] = time.time,
                 max_per_user: int = _MAX_PER_USER) -> None:
        self.idle = idle
        self._db, self._key, self._clock, self._max_per_user = db, key, clock, max_per_user
        self._next_sweep = 0.0

    @classmethod
    async def open(cls, db: Database, idle: float, **kwargs: object) -> "SessionStore":
        await db.migrate("console_sessions", SCHEMA)
        return cls(db, await load_secret(db, _KEY_NAME), idle, **kwargs)  # type: ignore[arg-type]

    def _mac(self, purpose: str, value: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    # -- before sign-in: stateless ---------------------------------------------------------------

    def _anonymous(self, nonce: str, issued: float) -> Session:
        body = f"{_ANONYMOUS}.{nonce}.{int(issued)}"
        return Session(f"{body}.{self._mac('session', body)}", self._mac("csrf", nonce), issued)

    def _verify_anonymous(self, session_id: str, touch: bool) -> Session | None:
        body, _, mac = session_id.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or not parts[2].isdigit() or not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        now, issued = self._clock(), float(parts[2])
        if now - issued > self.idle:
            return None
        # The same nonce (so the same CSRF token) re-issued now: use keeps it alive.
        fresh = touch and now - issued >= min(_TOUCH_EVERY, self.idle / 4)
        return self._anonymous(parts[1], now if fresh else issued)

    # -- signed in: one row each -----------------------------------------------------------------

    async def new(self, user: str | None = None, fingerprint: str | None = None) -> Session:
        now = self._clock()
        if user is None:
            return self._anonymous(secrets.token_urlsafe(16), now)
        assert fingerprint is not None
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, user, fingerprint)
        await self._db.execute(
            "INSERT INTO console_sessions (id_hash, username, fingerprint, csrf, created, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?)", (_hash(session.id), user, fingerprint, session.csrf, now, now))
        await self._db.execute(
            "DELETE FROM console_sessions WHERE username = ? AND id_hash NOT IN (SELECT id_hash FROM"
            " console_sessions WHERE username = ? ORDER BY created DESC, id_hash DESC LIMIT ?)",
            (user, user, self._max_per_user))
        await self._sweep(now)
        return session

    async def get(self, session_id: str | None, touch: bool = True) -> Session | None:
        """The live session for a cookie value, its idle clock restarted unless ``touch`` is
        false (a page polling for progress is not someone using the console); None when
        unknown, forged or idle too long."""
        if not session_id or len(session_id) > _MAX_COOKIE:
            return None
        if session_id.startswith(_ANONYMOUS + "."):
            return self._verify_anonymous(session_id, touch)
        key = _hash(session_id)
        row = await self._db.fetchone("SELECT username, fingerprint, csrf, last_seen FROM console_sessions"
                                      " WHERE id_hash = ?", (key,))
        if row is None:
            return None
        now = self._clock()
        if now - row["last_seen"] > self.idle:
            await self._db.execute("DELETE FROM console_sessions WHERE id_hash = ?", (key,))
            return None
        last_seen = row["last_seen"]
        if touch and now - last_seen >= min(_TOUCH_EVERY, self.idle / 4):
            # Written at most every 30 s (a quarter of a short idle limit): a write per request is waste,
            # and a session ends at most that much before its exact idle limit.
            await self._db.execute("UPDATE console_sessions SET last_seen = ? WHERE id_hash = ? AND last_seen < ?",
                                   (now, key, now))
            last_seen = now
        await self._sweep(now)
        return Session(session_id, row["csrf"], last_seen, row["username"], row["fingerprint"])

    async def refingerprint(self, session: Session, fingerprint: str) -> None:
        """Keep ``session`` after its own user changed their password."""
        session.fingerprint = fingerprint
        await self._db.execute("UPDATE console_sessions SET fingerprint = ? WHERE id_hash = ?",
                               (fingerprint, _hash(session.id)))

    async def end(self, session_id: str) -> None:
        if session_id and not session_id.startswith(_ANONYMOUS + "."):
            await self._db.execute("DELETE FROM console_sessions WHERE id_hash = ?", (_hash(session_id),))

    async def _sweep(self, now: float) -> None:
        """Delete idle rows now and then (one indexed delete a minute per process)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY
        await self._db.execute("DELETE FROM console_sessions WHERE last_seen < ?", (now - self.idle,))

    # -- flash messages: a signed cookie, read once ------------------------------------------------

    def seal_flash(self, messages: list[str]) -> str:
        """The cookie value carrying ``messages`` (oldest dropped past the size limit)."""
        kept = list(messages)
        while True:
            raw = json.dumps(kept, separators=(",", ":")).encode()
            if len(raw) <= _MAX_FLASH or not kept:
                break
            kept = kept[1:] if len(kept) > 1 else [kept[0][:200]]
        body = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return f"{body}.{self._mac('flash', body)}"

    def open_flash(self, value: str | None) -> list[str]:
        """The messages of a flash cookie; none for anything not sealed here."""
        if not value or len(value) > 2 * _MAX_FLASH:
            return []
        body, _, mac = value.rpartition(".")
        if not hmac.compare_digest(mac, self._mac("flash", body)):
            return []
        try:
            messages = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (binascii.Error, ValueError):
            return []
        return [m for m in messages if isinstance(m, str)] if isinstance(messages, list) else []
