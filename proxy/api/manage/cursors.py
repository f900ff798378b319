"""Opaque listing cursors: the position is encrypted and bound to its listing.

A cursor names where the previous page ended (a repository, a user, an id). Handed out in
the clear it would tell a caller names it may not see, and a caller could forge one to
start a scan anywhere; sealed with AES-GCM it is unreadable and unforgeable, and one
listing's cursor is refused by another (the route name is authenticated data).

The key is kept in the metadata database, created once by whichever process gets there
first, so every process sharing that database (replicas, restarts) reads the same key
and honours the others' cursors."""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from typing import Any, AsyncIterator

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...meta import Database
from ..state import DATABASE

__all__ = ["CursorCodec", "CURSORS", "SCHEMA", "load_key", "load_secret", "setup_cursors"]

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS server_secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        created_at REAL NOT NULL
    )""",
]
_KEY_NAME = "cursor-key"
_NONCE = 12
MAX_CURSOR = 2048


class CursorCodec:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encode(self, listing: str, value: Any) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, json.dumps(value, separators=(",", ":")).encode(), listing.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def decode(self, listing: str, cursor: str) -> Any:
        """The value sealed for ``listing``; ValueError for anything else."""
        if len(cursor) > MAX_CURSOR:
            raise ValueError("cursor too long")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], listing.encode())
            return json.loads(plain)
        except (binascii.Error, InvalidTag, ValueError, UnicodeDecodeError):
            raise ValueError("not a cursor of this listing") from None


CURSORS = web.AppKey("cursors", CursorCodec)


async def load_secret(db: Database, name: str) -> bytes:
    """The 32-byte secret ``name`` stored in the metadata database, created on first use
    (by whichever process gets there first; every other one reads the same)."""
    await db.migrate("server_secrets", SCHEMA)
    await db.execute("INSERT INTO server_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                     (name, os.urandom(32), time.time()))
    row = await db.fetchone("SELECT value FROM server_secrets WHERE name = ?", (name,))
    assert row is not None
    return bytes(row["value"])


async def load_key(db: Database) -> bytes:
    """The cursor key stored in the metadata database, created on first use."""
    return await load_secret(db, _KEY_NAME)


def setup_cursors(app: web.Application) -> None:
    """Load the key once the database is open (append after the storage context)."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        app[CURSORS] = CursorCodec(await load_key(app[DATABASE]))
        yield

    app.cleanup_ctx.append(lifetime)
