"""Password hashing with scrypt (memory-hard, RFC 7914), verified in constant time.

Encoded form: ``scrypt$<n>$<r>$<p>$<salt b64>$<key b64>``; the parameters travel with
the hash so they can be raised later without invalidating stored passwords. Verifying
against ``None`` (an unknown user, a robot without password) does the same work and
fails, so response time never tells whether a user exists.

``PasswordChecks`` runs the checks for the server: off the event loop, at most
``limit`` at once (each holds 16 MiB while it runs, so a burst of logins after the
password cache expires cannot allocate 16 MiB per request), and single-flighted:
concurrent checks of the same user, password and stored hash share one scrypt run."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os

__all__ = ["hash_password", "verify_password", "MAX_PASSWORD_BYTES", "PasswordChecks"]

# 16 MiB and roughly 50 ms per hash on a current core: OWASP's scrypt baseline.
_N, _R, _P = 2**14, 8, 1
_SALT_BYTES, _KEY_BYTES = 16, 32
# Parameters read back from the store are bounded, so a corrupt row can't exhaust memory.
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16
_MAXMEM = 256 * 1024 * 1024
_DUMMY_SALT = b"algomint-no-such-user"
MAX_PASSWORD_BYTES = 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_KEY_BYTES)


def hash_password(password: str) -> str:
    salt = os.urandom(_SALT_BYTES)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(_scrypt(password, salt, _N, _R, _P))}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        params = int(n), int(r), int(p)
        parsed = (*params, _unb64(salt), _unb64(key))
    except ValueError:
        return None
    n_, r_, p_ = params
    if scheme != "scrypt" or not (1 < n_ <= _MAX_N and n_ & (n_ - 1) == 0 and 0 < r_ <= _MAX_R and 0 < p_ <= _MAX_P):
        return None
    return parsed


def verify_password(password: str, encoded: str | None) -> bool:
    """True when ``password`` matches ``encoded``; same cost when ``encoded`` is None or unusable."""
    parsed = _parse(encoded) if encoded else None
    if parsed is None or len(password.encode()) > MAX_PASSWORD_BYTES:
        _scrypt(password[:MAX_PASSWORD_BYTES], _DUMMY_SALT, _N, _R, _P)
        return False
    n, r, p, salt, expected = parsed
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)


class PasswordChecks:
    """``verify_password`` in threads, bounded and single-flighted (see the module doc)."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._key = os.urandom(32)
        # (user, HMAC of the password, stored hash) -> the check running for it
        self._flights: dict[tuple[str, bytes, str | None], asyncio.Future[bool]] = {}
        self.runs = 0  # scrypt checks started (what single-flight saves shows here)

    async def verify(self, username: str, password: str, stored: str | None) -> tuple[bool, bool]:
        """``(ok, ran)``: ``ran`` is False when the answer came from another caller's check."""
        # Keyed by the password's HMAC, so a wrong password never joins (or poisons) a
        # right one's flight, and the password itself is not kept as a key.
        key = (username, hmac.new(self._key, password.encode(), hashlib.sha256).digest(), stored)
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight), False
        flight = asyncio.ensure_future(self._run(password, stored))
        self._flights[key] = flight
        flight.add_done_callback(lambda _: self._flights.pop(key, None))
        # Shielded: a caller that goes away (client disconnect) leaves the check to the others.
        return await asyncio.shield(flight), True

    async def _run(self, password: str, stored: str | None) -> bool:
        async with self._slots:
            self.runs += 1
            return await asyncio.to_thread(verify_password, password, stored)
