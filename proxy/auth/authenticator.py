"""Turning credentials into a principal: Basic, API tokens, registry bearer tokens.

Layer boundary: callers pass the raw ``Authorization`` value and the client address;
they get a principal or an ``AuthFailure`` whose ``reason`` is for the audit log and
whose ``message`` is safe for the client (it never says whether a user exists).

- Passwords: checked with scrypt off the event loop, a bounded number at once, and
  one check for concurrent identical credentials (``passwords.PasswordChecks``); unknown
  users, robots and disabled users cost the same as a real check. A successful check is remembered for a
  minute (keyed by an HMAC of the password under a per-process key, tied to the stored
  hash) so clients sending Basic on every request don't pay scrypt every time; the
  account itself is re-read on every request.
- Failed password logins slow down per (user name, client address) (``ratelimit``);
  API tokens and signed tokens are never throttled: they cannot be guessed, and a valid
  one must never be refused because of someone else's failures. Neither is a password
  remembered as checked: only the right one can be, and it skips the throttle's read
  of the store, which every other password login pays.
- Bearer tokens are verified by signature, then the account (and the API token they
  were obtained with) is re-checked, so disabling or revoking takes effect at once."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from dataclasses import dataclass

from ..service.policy import ANONYMOUS, Principal
from . import tokens as api_tokens
from .cache import TtlCache
from .passwords import MAX_PASSWORD_BYTES, PasswordChecks
from .permissions import TokenPrincipal
from .ratelimit import Hold, LoginThrottle, Throttled
from .registry_token import Claims, TokenError, TokenSigner, password_fingerprint
from .store import AuthStore, Identity

__all__ = ["Authenticator", "AuthFailure", "Login", "decode_basic", "MAX_AUTHORIZATION", "MAX_USERNAME"]

MAX_AUTHORIZATION = 4096
MAX_USERNAME = 256
_VERIFIED_TTL = 60.0
_TOKEN_REUSE = 3600.0  # at most a token's lifetime (token_ttl <= 3600)

BAD_CREDENTIALS = "invalid username or password"
BAD_TOKEN = "invalid, expired or revoked token"


class AuthFailure(Exception):
    """Credentials were presented and refused."""

    def __init__(self, reason: str, message: str = BAD_CREDENTIALS, *, claimed: str | None = None,
                 scheme: str = "basic", retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason  # precise, for the audit log
        self.message = message  # generic, for the client
        self.claimed = claimed  # the user name the client claimed, if any
        self.scheme = scheme  # "basic" | "bearer": which challenge to answer with
        self.retry_after = retry_after  # set when refused by the failed-login limit


@dataclass(frozen=True)
class Login:
    """A successful authentication."""

    identity: Identity
    principal: TokenPrincipal
    password_checked: bool  # scrypt ran now (not a cached check): recorded as a login
    fingerprint: str | None = None  # of the password hash, when a password was used


class Authenticator:
    def __init__(self, store: AuthStore, signer: TokenSigner, throttle: LoginThrottle,
                 password_checks: int = 4) -> None:
        self.store = store
        self.signer = signer
        self.throttle = throttle
        self.passwords = PasswordChecks(password_checks)
        self._cache_key = os.urandom(32)
        # (user, HMAC of the password) -> the stored hash it was checked against
        self._verified: TtlCache[tuple[str, bytes], str] = TtlCache(_VERIFIED_TTL)
        # Access tokens whose signature and claims were checked (a client reuses one for
        # minutes); expiry is still checked on every use.
        self._tokens: TtlCache[str, Claims] = TtlCache(_TOKEN_REUSE)

    # -- entry points -----------------------------------------------------------
    async def authorization(self, header: str | None, address: str | None,
                            registry: bool = True) -> tuple[Principal, Login | None]:
        """The principal for an ``Authorization`` header (None: anonymous). Registry bearer
        tokens are accepted only where ``registry`` is true (``/v2``): they carry a scope
        of repository actions and were never meant to manage anything."""
        if header is None:
            return ANONYMOUS, None
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        if len(header) > MAX_AUTHORIZATION:
            raise AuthFailure("oversized authorization header", "malformed Authorization header",
                              scheme="bearer" if scheme == "bearer" else "basic")
        value = value.strip()
        if scheme == "basic":
            login = await self.basic(value, address)
            return login.principal, login
        if scheme == "bearer" and value:
            if api_tokens.looks_like_token(value):
                login = await self.api_token(value, address)
                return login.principal, login
            if not registry:
                raise AuthFailure("registry token presented to the management API",
                                  "registry tokens are valid only for /v2; use a password or an API token",
                                  scheme="bearer")
            return await self.bearer(value), None
        raise AuthFailure("malformed authorization header", "malformed Authorization header")

    async def basic(self, value: str, address: str | None) -> Login:
        """``Basic`` credentials (the base64 part of the header)."""
        username, password = decode_basic(value)
        return await self.credentials(username, password, address)

    async def login(self, header: str, address: str | None) -> Login:
        """A whole ``Authorization`` header that must carry Basic credentials (the token service)."""
        scheme, _, value = header.strip().partition(" ")
        if len(header) > MAX_AUTHORIZATION:
            raise AuthFailure("oversized authorization header", "malformed Authorization header")
        if scheme.lower() != "basic":
            raise AuthFailure("token request without basic credentials", "use Basic credentials")
        return await self.basic(value.strip(), address)

    async def credentials(self, username: str, password: str, address: str | None) -> Login:
        """A user name with a password, or with an API token given as the password."""
        if not username or len(username) > MAX_USERNAME or len(password.encode()) > MAX_PASSWORD_BYTES:
            raise AuthFailure("oversized or empty credentials", "malformed credentials", claimed=username[:64] or None)
        if api_tokens.looks_like_token(password):
            return await self.api_token(password, address, username=username)
        return await self.password(username, password, address)

    async def password(self, username: str, password: str, address: str | None) -> Login:
        # A password verified moments ago against the hash still stored gets in without
        # the throttle's read of the store (a round trip per request on PostgreSQL). Only
        # the right password can be in the cache; the throttle spaces guesses, which all
        # miss it, and never keeps a right password out.
        identity = await self.store.identity(username)
        if identity is not None and not identity.user.disabled and self._recently_verified(
                username, password, identity.user.password_hash):
            return Login(identity, self._principal(identity, "basic"), False,
                         password_fingerprint(identity.user.password_hash))
        try:
            async with self.throttle.turn(username, address) as hold:
                return await self._password(username, password, address, hold)
        except Throttled as exc:
            raise AuthFailure("too many failed logins", "too many failed logins; try again later",
                              claimed=username, retry_after=exc.retry_after) from None

    def _verified_key(self, username: str, password: str) -> tuple[str, bytes]:
        return username, hmac.new(self._cache_key, password.encode(), hashlib.sha256).digest()

    def _recently_verified(self, username: str, password: str, stored: str | None) -> bool:
        hit, checked_against = self._verified.get(self._verified_key(username, password))
        return bool(hit and stored is not None and checked_against == stored)

    async def _password(self, username: str, password: str, address: str | None, hold: Hold) -> Login:
        identity = await self.store.identity(username)
        stored = identity.user.password_hash if identity is not None else None
        checked = not self._recently_verified(username, password, stored)
        if checked:
            ok, checked = await self.passwords.verify(username, password, stored)
            if not ok:
                await self.throttle.failed(username, address)
                raise AuthFailure("unknown user" if identity is None else "wrong password", claimed=username)
            assert stored is not None
            self._verified.put(self._verified_key(username, password), stored)
        assert identity is not None
        if identity.user.disabled:
            await self.throttle.failed(username, address)
            raise AuthFailure("account disabled", claimed=username)
        if checked:
            await self.throttle.succeeded(hold)
        principal = self._principal(identity, "basic")
        return Login(identity, principal, checked, password_fingerprint(identity.user.password_hash))

    async def api_token(self, token: str, address: str | None, username: str | None = None) -> Login:
        scheme = "basic" if username is not None else "bearer"
        parsed = api_tokens.parse(token)
        record = await self.store.api_token(parsed[0]) if parsed else None
        now = time.time()
        reason = None
        if record is None or parsed is None:
            reason = "unknown api token" if parsed else "malformed api token"
        elif not api_tokens.secret_matches(parsed[1], record.secret_hash):
            reason = "api token secret mismatch"
        elif record.state(now) != "active":
            reason = f"api token {record.state(now)}"
        elif username is not None and username != record.owner:
            reason = "api token belongs to another user"
        identity = await self.store.identity(record.owner) if record is not None and reason is None else None
        if reason is None and (identity is None or identity.user.disabled):
            reason = "account disabled"
        if reason is not None or identity is None or record is None:
            raise AuthFailure(reason or "account disabled", BAD_TOKEN if scheme == "bearer" else BAD_CREDENTIALS,
                              claimed=username or (record.owner if record else None), scheme=scheme)
        await self.store.touch_token(record.id, now)
        return Login(identity, self._principal(identity, "api_token", token_id=record.id), False)

    async def bearer(self, token: str) -> TokenPrincipal:
        """A registry access token: signature and claims, then the account re-checked."""
        _, claims = self._tokens.get(token)
        # A reused check stands only while the key that signed it is still in the ring.
        if claims is None or time.time() >= claims.expires_at or not self.signer.keys.has(claims.key_id):
            try:
                claims = self.signer.verify(token, "access")
            except TokenError as exc:
                raise AuthFailure(f"bearer token: {exc.reason}", BAD_TOKEN, scheme="bearer") from None
            self._tokens.put(token, claims)
        if claims.kind == "anonymous":
            return TokenPrincipal(ANONYMOUS.name, "anonymous", method="bearer", access=claims.access)
        identity = await self._recheck(claims, "bearer token")
        return self._principal(identity, "bearer", token_id=claims.token_id, access=claims.access)

    async def refresh(self, token: str, address: str | None) -> Login:
        """An OAuth2 refresh token: valid only while the account, password and API token are unchanged."""
        try:
            claims = self.signer.verify(token, "refresh")
        except TokenError as exc:
            raise AuthFailure(f"refresh token: {exc.reason}", BAD_TOKEN, scheme="bearer") from None
        identity = await self._recheck(claims, "refresh token")
        if claims.password_fingerprint and claims.password_fingerprint != password_fingerprint(
                identity.user.password_hash):
            raise AuthFailure("refresh token: password changed since", BAD_TOKEN, claimed=claims.subject,
                              scheme="bearer")
        principal = self._principal(identity, "basic" if claims.token_id is None else "api_token",
                                    token_id=claims.token_id)
        return Login(identity, principal, False, claims.password_fingerprint)

    # -- helpers ----------------------------------------------------------------
    async def _recheck(self, claims: Claims, what: str) -> Identity:
        identity = await self.store.identity(claims.subject)
        if identity is None or identity.user.disabled:
            raise AuthFailure(f"{what}: account disabled or removed", BAD_TOKEN, claimed=claims.subject,
                              scheme="bearer")
        if claims.token_id is not None:
            record = await self.store.api_token(claims.token_id)
            if record is None or record.state(time.time()) != "active":
                raise AuthFailure(f"{what}: api token no longer active", BAD_TOKEN, claimed=claims.subject,
                                  scheme="bearer")
        return identity

    @staticmethod
    def _principal(identity: Identity, method: str, *, token_id: str | None = None,
                   access: frozenset[tuple[str, str, str]] | None = None) -> TokenPrincipal:
        roles = tuple(dict.fromkeys(g.role for g in identity.grants))
        return TokenPrincipal(identity.user.name, identity.user.kind, roles, method=method, token_id=token_id,
                              access=access)


def decode_basic(value: str) -> tuple[str, str]:
    """``(user, password)`` from a Basic credential; AuthFailure when malformed or oversized."""
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthFailure("malformed basic credentials", "malformed Authorization header") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise AuthFailure("malformed basic credentials", "malformed Authorization header")
    return username, password
