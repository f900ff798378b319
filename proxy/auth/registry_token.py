"""Registry bearer tokens: short-lived JWS (HS256, compact form) per the docker token spec.

Access tokens carry ``iss``, ``sub``, ``aud`` (the service), ``exp``, ``nbf``, ``iat``,
``jti`` and ``access`` — the granted ``[{type, name, actions}]`` — plus ``kind`` (user or
robot) and, when obtained with an API token, ``tid`` so revoking that token also stops
its bearer tokens. Refresh tokens (OAuth2 ``refresh_token`` grant) are the same form with
``use = "refresh"``; they also bind ``pwf``, a fingerprint of the password hash, so a
password change ends them. The HMAC key is generated on first start and kept in a file
only the server can read; replicas share it by configuration."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .. import safejson
from ..oci.errors import RegistryError
from ..oci.reference import validate_name

__all__ = [
    "Scope", "Claims", "TokenError", "TokenSigner", "parse_scopes", "load_or_create_key", "password_fingerprint",
    "MAX_TOKEN_CHARS", "MAX_SCOPES",
]

ISSUER = "algomint"
MAX_TOKEN_CHARS = 4096
MAX_SCOPES = 32
_KEY_BYTES = 32
_NBF_LEEWAY = 30  # seconds of clock skew tolerated between replicas
_HEADER = {"alg": "HS256", "typ": "JWT"}


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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def password_fingerprint(password_hash: str | None) -> str | None:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16] if password_hash else None


def load_or_create_key(path: Path) -> bytes:
    """Read the signing key, creating it (mode 0600, atomically) if absent."""
    try:
        raw = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(_KEY_BYTES).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created it first: use theirs
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        raw = path.read_text().strip()
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        raise ValueError(f"{path}: signing key is not hex") from None
    if len(key) < _KEY_BYTES:
        raise ValueError(f"{path}: signing key must be at least {_KEY_BYTES} bytes")
    return key


class TokenSigner:
    def __init__(self, key: bytes, service: str) -> None:
        self._key = key
        self.service = service
        # Names the key without revealing it, so tokens from a rotated key are told apart.
        self.kid = hashlib.sha256(b"algomint-kid:" + key).hexdigest()[:16]
        self._header = _b64(_json({**_HEADER, "kid": self.kid}))

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
        signing_input = f"{self._header}.{_b64(_json(payload))}"
        token = f"{signing_input}.{_b64(self._sign(signing_input))}"
        return token, self._claims(payload)

    def _sign(self, signing_input: str) -> bytes:
        return hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()

    def verify(self, token: str, use: str, now: float | None = None) -> Claims:
        """The claims of a token this server signed for this service and ``use``; else TokenError."""
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError("token too long")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("not a compact JWS")
        header_b64, payload_b64, signature_b64 = parts
        try:
            header = safejson.loads(_unb64(header_b64))  # before the signature is checked: untrusted
            signature = _unb64(signature_b64)
        except (ValueError, UnicodeDecodeError):
            raise TokenError("undecodable token") from None
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise TokenError("unsupported algorithm")
        if not hmac.compare_digest(signature, self._sign(f"{header_b64}.{payload_b64}")):
            raise TokenError("bad signature" if header.get("kid") == self.kid else "signed with another key")
        try:
            payload = json.loads(_unb64(payload_b64))
        except (ValueError, UnicodeDecodeError):
            raise TokenError("undecodable payload") from None
        if not isinstance(payload, dict):
            raise TokenError("payload is not an object")
        now = time.time() if now is None else now
        audience = payload.get("aud")
        if payload.get("iss") != ISSUER or (audience != self.service and not (
                isinstance(audience, list) and self.service in audience)):
            raise TokenError("issued for another service")
        if payload.get("use") != use:
            raise TokenError(f"not a token for {use}")
        try:
            claims = self._claims(payload)
        except (KeyError, TypeError, ValueError):
            raise TokenError("malformed claims") from None
        if now >= claims.expires_at:
            raise TokenError("expired")
        if payload.get("nbf", 0) > now + _NBF_LEEWAY:
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
