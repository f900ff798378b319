"""API tokens: ``amt_<id>_<secret>``, random, shown once, stored as a SHA-256 of the secret.

The prefix makes a leaked token recognisable (secret scanners, logs); the id is public
and names the stored row; the secret carries 256 bits of entropy, so a fast hash is
enough (no KDF: nothing to brute-force) and it is compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["PREFIX", "NewApiToken", "generate", "parse", "hash_secret", "secret_matches", "looks_like_token"]

PREFIX = "amt_"
_ID_HEX = 12
_TOKEN_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{{_ID_HEX}}})_([A-Za-z0-9_-]{{43}})$")


@dataclass(frozen=True)
class NewApiToken:
    id: str
    token: str  # the full secret string: returned once, never stored
    secret_hash: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate() -> NewApiToken:
    token_id = secrets.token_hex(_ID_HEX // 2)
    secret = secrets.token_urlsafe(32)  # 43 characters
    return NewApiToken(token_id, f"{PREFIX}{token_id}_{secret}", hash_secret(secret))


def looks_like_token(value: str) -> bool:
    """True for anything carrying the API token prefix (a password never does)."""
    return value.startswith(PREFIX)


def parse(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    match = _TOKEN_RE.match(token)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
