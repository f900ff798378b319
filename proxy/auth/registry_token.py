"""Registry bearer tokens: short-lived JWTs signed ES256 per the docker token spec.

Access tokens carry ``iss``, ``sub``, ``aud`` (the service), ``exp``, ``nbf``, ``iat``,
``jti`` and ``access`` — the granted ``[{type, name, actions}]`` — plus ``kind`` (user or
robot) and, when obtained with an API token, ``tid`` so revoking that token also stops
its bearer tokens. Refresh tokens (OAuth2 ``refresh_token`` grant) are the same form with
``use = "refresh"``; they also bind ``pwf``, a fingerprint of the password hash, so a
password change ends them.

Signing and verification are PyJWT's; the keys are asymmetric (``keyring``): whoever
verifies a token (a replica, a backing registry) holds only public keys and cannot mint
one. The header's ``kid`` names the key, so keys can rotate."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Iterable

import jwt

from ..oci.errors import RegistryError
from ..oci.reference import validate_name
from .keyring import KeyRing

__all__ = [
    "Scope", "Claims", "TokenError", "TokenSigner", "parse_scopes", "password_fingerprint", "ALGORITHM",
    "MAX_TOKEN_CHARS", "MAX_SCOPES",
]

ISSUER = "algomint"
MAX_TOKEN_CHARS = 4096
MAX_SCOPES = 32
ALGORITHM = "ES256"
_NBF_LEEWAY = 30  # seconds of clock skew tolerated between replicas


class TokenError(Exception):
    """A token that can't be used; ``reason`` is for the audit log, never the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Scope:
    """``type:name:actions`` from a token request (``repository:generic/face:pull,push``)."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Scopes from ``scope`` parameters (each may hold several, space-separated).

    Malformed scopes and invalid repository names are dropped: the spec has the token
    server grant what it can, and nothing for what it can't parse."""
    scopes: list[Scope] = []
    for value in values:
        for item in value.split():
            if len(scopes) >= MAX_SCOPES:
                return scopes
            kind, sep1, rest = item.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not (sep1 and sep2 and kind and name and actions):
                continue
            if kind.startswith("repository"):  # "repository(plugin)" is an old alias
                kind = "repository"
                try:
                    validate_name(name)
                except RegistryError:
                    continue
            scopes.append(Scope(kind, name, tuple(dict.fromkeys(a for a in actions.split(",") if a))))
    return scopes


@dataclass(frozen=True)
class Claims:
    subject: str
    kind: str
    use: str  # "access" | "refresh"
    access: frozenset[tuple[str, str, str]]
    token_id: str | None
    password_fingerprint: str | None
    issued_at: int
    expires_at: int
    jti: str
    key_id: str | None = None  # the key that signed it


def password_fingerprint(password_hash: str | None) -> str | None:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16] if password_hash else None


class TokenSigner:
    def __init__(self, keys: KeyRing, service: str) -> None:
        self.keys = keys
        self.service = service

    def issue(
        self,
        subject: str,
        kind: str,
        *,
        use: str,
        ttl: int,
        access: Iterable[dict[str, Any]] = (),
        token_id: str | None = None,
        password_fingerprint: str | None = None,
        now: float | None = None,
    ) -> tuple[str, Claims]:
        issued = int(time.time() if now is None else now)
        payload: dict[str, Any] = {
            "iss": ISSUER, "sub": subject, "aud": self.service, "iat": issued, "nbf": issued, "exp": issued + ttl,
            "jti": secrets.token_hex(12), "kind": kind, "use": use, "access": list(access),
        }
        if token_id:
            payload["tid"] = token_id
        if password_fingerprint:
            payload["pwf"] = password_fingerprint
        key = self.keys.signer(time.time() if now is None else now)
        token = jwt.encode(payload, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, self._claims(payload)

    def verify(self, token: str, use: str, now: float | None = None) -> Claims:
        """The claims of a token this server signed for this service and ``use``; else TokenError."""
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("not a compact JWS") from None
        if header.get("alg") != ALGORITHM:
            raise TokenError("unsupported algorithm")
        public = self.keys.verifier(str(header.get("kid", "")))
        if public is None:
            raise TokenError("signed with an unknown key")
        now = time.time() if now is None else now
        try:
            # Expiry is checked below against ``now`` (so tests can move the clock); nbf gets leeway.
            payload = jwt.decode(token, public, algorithms=[ALGORITHM], audience=self.service, issuer=ISSUER,
                                 options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                          "require": ["exp", "iat", "sub", "aud", "iss", "jti"]})
        except jwt.InvalidAudienceError:
            raise TokenError("issued for another service") from None
        except jwt.InvalidIssuerError:
            raise TokenError("issued for another service") from None
        except jwt.InvalidSignatureError:
            raise TokenError("bad signature") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {type(exc).__name__}") from None
        if payload.get("use") != use:
            raise TokenError(f"not a token for {use}")
        try:
            claims = dataclasses.replace(self._claims(payload), key_id=str(header.get("kid")))
        except (KeyError, TypeError, ValueError):
            raise TokenError("malformed claims") from None
        if now >= claims.expires_at:
            raise TokenError("expired")
        nbf = payload.get("nbf", 0)
        if not isinstance(nbf, (int, float)) or nbf > now + _NBF_LEEWAY:
            raise TokenError("not yet valid")
        return claims

    @staticmethod
    def _claims(payload: dict[str, Any]) -> Claims:
        access = frozenset(
            (str(entry["type"]), str(entry["name"]), str(action))
            for entry in payload.get("access", [])
            for action in entry["actions"]
        )
        return Claims(
            subject=str(payload["sub"]), kind=str(payload["kind"]), use=str(payload["use"]), access=access,
            token_id=payload.get("tid"), password_fingerprint=payload.get("pwf"),
            issued_at=int(payload["iat"]), expires_at=int(payload["exp"]), jti=str(payload["jti"]),
        )
