"""Credentials toward a backend registry: answer ``WWW-Authenticate`` challenges.

Implements the two schemes registries use (distribution ``docs/spec/auth/token.md``):

- ``Basic``: once the backend asked for it, every request carries the configured
  username and password.
- ``Bearer realm=…,service=…,scope=…``: GET the realm with ``service`` and each
  ``scope`` (basic credentials if configured, anonymous otherwise) and send the token.
  Tokens are cached per scope set until shortly before ``expires_in`` (default 60 s).

A request whose body is a stream cannot be replayed after a 401, so ``prepare`` gets
the right credentials *before* such a request is sent.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import aiohttp
from yarl import URL

from .. import safejson
from ..oci.errors import Errors, RegistryError

__all__ = ["Authenticator", "Challenge", "invalid_response", "parse_challenges", "unreachable"]

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = 60  # token.md: "if omitted, 60 seconds"
_MIN_EXPIRES_IN = 5
_TOKEN_BODY_LIMIT = 1024 * 1024
_TOKEN_CACHE_PRUNE_AT = 1024

# RFC 9110 §5.6.2 token, and an auth-param whose value is a quoted-string or a bare word
# (some registries send unquoted URLs, hence the lenient ``[^\s,]*``).
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PARAM_RE = re.compile(r'([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)')
_SEPARATORS_RE = re.compile(r"[\s,]*")
_UNESCAPE_RE = re.compile(r"\\(.)")


@dataclass
class Challenge:
    """One ``WWW-Authenticate`` challenge: a lower-cased scheme and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into challenges (RFC 9110 §11.6.1).

    Quoted values may contain commas and escaped quotes (a scope list such as
    ``"repository:a:pull,push"``); several challenges may share one header.
    Unparseable trailing input is ignored rather than failing the request.
    """
    challenges: list[Challenge] = []
    pos, end = 0, len(header)
    while True:
        pos = _SEPARATORS_RE.match(header, pos).end()  # type: ignore[union-attr]
        if pos >= end:
            break
        param = _PARAM_RE.match(header, pos)
        if param is not None and challenges:
            name, value = param.group(1).lower(), param.group(2)
            if value.startswith('"'):
                value = _UNESCAPE_RE.sub(r"\1", value[1:-1])
            challenges[-1].params.setdefault(name, value)
            pos = param.end()
            continue
        scheme = _TOKEN_RE.match(header, pos)
        if scheme is None:
            break
        challenges.append(Challenge(scheme.group(0).lower()))
        pos = scheme.end()
    return challenges


def unreachable(exc: BaseException) -> RegistryError:
    """Translate a transport failure; the message names the failure, never the URL."""
    log.warning("backend registry request failed: %r", exc)
    if isinstance(exc, asyncio.TimeoutError):
        what = "timed out"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        what = f"cannot connect ({_os_reason(exc.os_error)})"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        what = "connection closed by the backend"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        what = "incomplete response body"
    elif isinstance(exc, OSError) and exc.errno:
        what = _os_reason(exc)
    else:
        what = type(exc).__name__
    return RegistryError(Errors.UNAVAILABLE, message=f"backend registry unreachable: {what}")


def _os_reason(exc: OSError) -> str:
    # ``os.strerror`` rather than ``exc.strerror``: asyncio puts the address in the latter.
    return os.strerror(exc.errno) if exc.errno else type(exc).__name__


def invalid_response(what: str) -> RegistryError:
    """A backend answer we cannot use (garbage, missing headers): ``UNAVAILABLE``."""
    return RegistryError(Errors.UNAVAILABLE, message=f"backend registry sent an invalid response: {what}")


class Authenticator:
    """Authorization headers for one backend, learned from its challenges.

    ``headers(scopes)`` is what to send now; ``answer(challenge, scopes)`` learns from a
    401 and says whether a retry can succeed; ``prepare(scopes)`` makes sure
    ``headers`` is complete before a request that cannot be replayed.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        probe_url: URL,
        username: str | None = None,
        password: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._clock = clock  # injectable so tests can expire tokens without sleeping
        self._probe_url = probe_url
        # Encoded by hand: ``aiohttp.BasicAuth`` is deprecated in newer aiohttp.
        self._basic = (
            "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            if username is not None
            else None
        )
        # What the backend asked for: None (not known yet), "none", "basic" or "bearer".
        self._scheme: str | None = None
        self._realm: str | None = None
        self._service: str | None = None
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._probe_lock = asyncio.Lock()

    @property
    def has_credentials(self) -> bool:
        return self._basic is not None

    def headers(self, scopes: Sequence[str]) -> dict[str, str]:
        """The ``Authorization`` header to send for ``scopes``, if one is known."""
        if self._scheme == "basic" and self._basic is not None:
            return {"Authorization": self._basic}
        if self._scheme == "bearer":
            cached = self._tokens.get(tuple(scopes))
            if cached is not None and cached[1] > self._clock():
                return {"Authorization": f"Bearer {cached[0]}"}
        return {}

    async def answer(self, header: str, scopes: Sequence[str], *, sent: bool) -> bool:
        """Learn from a 401's ``WWW-Authenticate``; True if a retry may now succeed.

        ``sent`` says whether the refused request already carried credentials.
        """
        challenges = {c.scheme: c for c in parse_challenges(header)}
        bearer = challenges.get("bearer")
        if bearer is not None and bearer.params.get("realm"):
            self._scheme = "bearer"
            self._realm = bearer.params["realm"]
            self._service = bearer.params.get("service")
            # The backend knows best which scopes it wants (space-separated, token.md).
            wanted = bearer.params.get("scope", "").split() or list(scopes)
            await self._fetch_token(tuple(scopes), wanted, force=True)
            return True
        if "basic" in challenges:
            self._scheme = "basic"
            # Basic credentials that were sent and refused will be refused again.
            return self._basic is not None and not sent
        return False

    async def prepare(self, scopes: Sequence[str]) -> None:
        """Make ``headers(scopes)`` complete without sending the real request."""
        if self._scheme is None:
            async with self._probe_lock:
                if self._scheme is None:
                    await self._probe()
        if self._scheme == "bearer":
            key = tuple(scopes)
            cached = self._tokens.get(key)
            if cached is None or cached[1] <= self._clock():
                await self._fetch_token(key, list(scopes), force=False)

    async def _probe(self) -> None:
        """``GET /v2/`` anonymously: the version check answers with the challenge."""
        try:
            async with await _get(self._session, self._probe_url, allow_redirects=False) as resp:
                if resp.status == 401:
                    challenges = {c.scheme: c for c in parse_challenges(resp.headers.get("WWW-Authenticate", ""))}
                    bearer = challenges.get("bearer")
                    if bearer is not None and bearer.params.get("realm"):
                        self._scheme = "bearer"
                        self._realm = bearer.params["realm"]
                        self._service = bearer.params.get("service")
                    elif "basic" in challenges:
                        self._scheme = "basic"
                    else:
                        raise invalid_response("401 without a usable WWW-Authenticate challenge")
                elif resp.status < 500:
                    self._scheme = "none"
                else:
                    raise RegistryError(
                        Errors.UNAVAILABLE, message=f"backend registry answered {resp.status} to the version check"
                    )
        except (aiohttp.ClientError, OSError) as exc:
            raise unreachable(exc) from None

    async def _fetch_token(self, key: tuple[str, ...], scopes: Sequence[str], *, force: bool) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            # A concurrent caller may have refreshed it while we waited; a forced
            # refresh (the backend refused the token we sent) always asks again.
            if not force and cached is not None and cached[1] > self._clock():
                return
            token, expires_in = await self._request_token(scopes)
            # Refresh shortly before expiry so a token never dies mid-request.
            lifetime = max(expires_in - max(5.0, expires_in * 0.1), expires_in / 2)
            if len(self._tokens) >= _TOKEN_CACHE_PRUNE_AT:
                now = self._clock()
                for stale in [k for k, (_, exp) in self._tokens.items() if exp <= now]:
                    self._tokens.pop(stale, None)
                    self._locks.pop(stale, None)
            self._tokens[key] = (token, self._clock() + lifetime)

    async def _request_token(self, scopes: Sequence[str]) -> tuple[str, float]:
        assert self._realm is not None
        params: list[tuple[str, str]] = []
        if self._service:
            params.append(("service", self._service))
        params.extend(("scope", scope) for scope in scopes)
        try:
            realm = URL(self._realm)
        except (ValueError, TypeError):
            raise invalid_response("unparseable bearer realm") from None
        if not realm.is_absolute() or realm.scheme not in ("http", "https"):
            raise invalid_response("bearer realm is not an http(s) URL")
        try:
            # aiohttp drops Authorization if the realm redirects to another origin.
            headers = {"Authorization": self._basic} if self._basic else {}
            async with await _get(self._session, realm.extend_query(params), headers=headers,
                                  allow_redirects=True) as resp:
                if resp.status in (401, 403):
                    raise RegistryError(
                        Errors.UNAVAILABLE,
                        message="backend token service refused the configured credentials"
                        if self._basic
                        else "backend token service requires credentials; none are configured",
                    )
                if resp.status != 200:
                    raise RegistryError(
                        Errors.UNAVAILABLE, message=f"backend token service answered {resp.status}"
                    )
                body = await resp.content.read(_TOKEN_BODY_LIMIT + 1)
        except (aiohttp.ClientError, OSError) as exc:
            raise unreachable(exc) from None
        if len(body) > _TOKEN_BODY_LIMIT:
            raise invalid_response("token response too large")
        return _parse_token(body)


def is_reset(exc: BaseException) -> bool:
    """A connection reset or closed by the other side before its answer."""
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError, BrokenPipeError)):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)


async def _get(session: aiohttp.ClientSession, url: URL, **kwargs: Any) -> aiohttp.ClientResponse:
    """A version-check or token GET, sent once more at once if its connection was reset
    before the answer (a pooled connection the server had closed): aiohttp's own retry is
    off in this session, as the backend's reads retry on their own terms."""
    try:
        return await session.get(url, **kwargs)
    except (aiohttp.ClientError, OSError) as exc:
        if not is_reset(exc):
            raise
    return await session.get(url, **kwargs)


def _parse_token(body: bytes) -> tuple[str, float]:
    try:
        doc = safejson.loads(body)
    except ValueError:
        raise invalid_response("token response is not JSON") from None
    if not isinstance(doc, Mapping):
        raise invalid_response("token response is not a JSON object")
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise invalid_response("token response carries no token")
    expires_in = doc.get("expires_in")
    if not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool) or expires_in <= 0:
        expires_in = DEFAULT_EXPIRES_IN
    return token, float(max(expires_in, _MIN_EXPIRES_IN))
