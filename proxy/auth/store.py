"""Users, robots, API tokens and grants in the metadata store, with a short read cache.

Every credential check reads through ``identity``/``api_token``; entries are reused for
at most ``cache_ttl`` seconds, and every change made through this store drops the
affected entries at once, so a disabled user or revoked token stops working on the next
request served by this process. Every change also bumps the shared ``auth`` version in
its transaction; other replicas see the bump within ``[cluster] poll_interval`` and drop
their caches (``invalidate``), well before ``cache_ttl``."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..cluster.versions import AUTH, bump
from ..meta import Database
from ..meta.db import Transaction
from ..service.policy import Principal
from . import tokens as api_tokens
from .cache import TtlCache
from .patterns import validate_pattern
from .permissions import ROLES, Permissions

__all__ = [
    "SCHEMA", "AuthStore", "User", "Grant", "ApiTokenRecord", "Identity", "NotFound", "Conflict", "validate_user_name",
]

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS auth_users (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('user', 'robot')),
        password_hash TEXT,
        disabled INTEGER NOT NULL DEFAULT 0,
        description TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS auth_tokens (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL REFERENCES auth_users(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        expires_at REAL NOT NULL,
        revoked_at REAL,
        last_used_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS auth_tokens_owner ON auth_tokens(owner, id)",
    """CREATE TABLE IF NOT EXISTS auth_grants (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        subject TEXT NOT NULL REFERENCES auth_users(name) ON DELETE CASCADE,
        role TEXT NOT NULL,
        pattern TEXT NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        UNIQUE (subject, role, pattern)
    )""",
]

_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
# Names the audit log and principals already use for non-users.
_RESERVED_NAMES = frozenset({"anonymous", "algomint", "system", "me"})
# last_used_at is written at most this often per token (it's informational).
_TOUCH_INTERVAL = 60.0
_TOUCHED_MAX = 10_000


class NotFound(LookupError):
    """The named user, token or grant does not exist."""


class Conflict(Exception):
    """The change contradicts existing state (duplicate, last admin, …)."""


def validate_user_name(name: str) -> str:
    if not _NAME_RE.match(name) or name in _RESERVED_NAMES:
        raise ValueError(
            "user names are 1-64 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter "
            f"or digit, and not one of {sorted(_RESERVED_NAMES)}"
        )
    return name


@dataclass(frozen=True)
class User:
    name: str
    kind: str  # "user" | "robot"
    password_hash: str | None = field(repr=False)
    disabled: bool
    description: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Grant:
    id: int
    subject: str
    role: str
    pattern: str
    created_at: float
    created_by: str


@dataclass(frozen=True)
class ApiTokenRecord:
    id: str
    owner: str
    name: str
    secret_hash: str = field(repr=False)
    created_at: float
    created_by: str
    expires_at: float
    revoked_at: float | None
    last_used_at: float | None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "active"


@dataclass(frozen=True)
class Identity:
    """A user or robot as the policy sees it: the account, its grants, what they allow."""

    user: User
    grants: tuple[Grant, ...]
    permissions: Permissions


def _user(row: Any) -> User:
    return User(row["name"], row["kind"], row["password_hash"], bool(row["disabled"]), row["description"],
                row["created_at"], row["updated_at"])


def _grant(row: Any) -> Grant:
    return Grant(row["id"], row["subject"], row["role"], row["pattern"], row["created_at"], row["created_by"])


def _token(row: Any) -> ApiTokenRecord:
    return ApiTokenRecord(row["id"], row["owner"], row["name"], row["secret_hash"], row["created_at"],
                          row["created_by"], row["expires_at"], row["revoked_at"], row["last_used_at"])


class AuthStore:
    def __init__(
        self,
        db: Database,
        *,
        cache_ttl: float = 5.0,
        anonymous_pull: Sequence[str] = (),
        system_namespaces: Sequence[str] = (),
    ) -> None:
        self.db = db
        self.anonymous_pull = list(anonymous_pull)
        self.system_namespaces = list(system_namespaces)
        self._identities: TtlCache[str, Identity | None] = TtlCache(cache_ttl)
        self._tokens: TtlCache[str, ApiTokenRecord | None] = TtlCache(cache_ttl)
        self._touched: dict[str, float] = {}
        self.anonymous = Permissions((), self.anonymous_pull, self.system_namespaces)

    def invalidate(self) -> None:
        """Another replica changed users, grants or tokens: read them afresh."""
        self._identities.clear()
        self._tokens.clear()

    # -- reads on the credential path -------------------------------------------
    async def identity(self, name: str) -> Identity | None:
        """The user or robot ``name`` with its grants (cached briefly); None if unknown."""
        hit, cached = self._identities.get(name)
        if hit:
            return cached
        row = await self.db.fetchone("SELECT * FROM auth_users WHERE name = ?", (name,))
        identity = None
        if row is not None:
            grants = tuple(_grant(g) for g in await self.db.fetchall(
                "SELECT * FROM auth_grants WHERE subject = ? ORDER BY id", (name,)))
            perms = Permissions([(g.role, g.pattern) for g in grants], self.anonymous_pull, self.system_namespaces)
            identity = Identity(_user(row), grants, perms)
        self._identities.put(name, identity)
        return identity

    async def api_token(self, token_id: str) -> ApiTokenRecord | None:
        hit, cached = self._tokens.get(token_id)
        if hit:
            return cached
        row = await self.db.fetchone("SELECT * FROM auth_tokens WHERE id = ?", (token_id,))
        record = _token(row) if row is not None else None
        self._tokens.put(token_id, record)
        return record

    async def permissions_of(self, principal: Principal) -> Permissions | None:
        """``IdentitySource`` for the policy: None when the account is gone or disabled."""
        if principal.kind == "anonymous":
            return self.anonymous
        identity = await self.identity(principal.name)
        if identity is None or identity.user.disabled:
            return None
        return identity.permissions

    async def touch_token(self, token_id: str, now: float) -> None:
        """Record a use of an API token, at most once a minute per token."""
        if now - self._touched.get(token_id, 0.0) < _TOUCH_INTERVAL:
            return
        if len(self._touched) >= _TOUCHED_MAX:
            self._touched.clear()
        self._touched[token_id] = now
        await self.db.execute("UPDATE auth_tokens SET last_used_at = ? WHERE id = ?", (now, token_id))

    # -- users ------------------------------------------------------------------
    async def count_users(self) -> int:
        row = await self.db.fetchone("SELECT COUNT(*) AS n FROM auth_users")
        return int(row["n"]) if row else 0

    async def get_user(self, name: str) -> User:
        row = await self.db.fetchone("SELECT * FROM auth_users WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no user {name!r}")
        return _user(row)

    async def list_users(self, limit: int, after: str | None = None) -> list[User]:
        rows = await self.db.fetchall(
            "SELECT * FROM auth_users WHERE name > ? ORDER BY name LIMIT ?", (after or "", limit)
        )
        return [_user(r) for r in rows]

    async def create_user(
        self,
        name: str,
        *,
        kind: str,
        password_hash: str | None,
        description: str = "",
        roles: Sequence[str] = (),
        created_by: str,
    ) -> User:
        """Create the account and grant each role on the role's default patterns, atomically."""
        validate_user_name(name)
        now = time.time()
        async with self.db.transaction() as tx:
            if await tx.fetchone("SELECT 1 FROM auth_users WHERE name = ?", (name,)):
                raise Conflict(f"user {name!r} already exists")
            await tx.execute(
                "INSERT INTO auth_users (name, kind, password_hash, disabled, description, created_at, updated_at) "
                "VALUES (?, ?, ?, 0, ?, ?, ?)",
                (name, kind, password_hash, description, now, now),
            )
            for role in roles:
                for pattern in ROLES[role].defaults:
                    await self._insert_grant(tx, name, role, pattern, now, created_by)
            await bump(tx, AUTH)  # a replica may have cached "no such user"
        self._identities.drop(name)
        return await self.get_user(name)

    async def update_user(
        self,
        name: str,
        *,
        disabled: bool | None = None,
        description: str | None = None,
        password_hash: str | None = None,
    ) -> User:
        async with self.db.transaction() as tx:
            row = await tx.fetchone("SELECT * FROM auth_users WHERE name = ?", (name,))
            if row is None:
                raise NotFound(f"no user {name!r}")
            user = _user(row)
            if disabled and not user.disabled:
                await self._keep_an_admin(tx, without_user=name)
            await tx.execute(
                "UPDATE auth_users SET disabled = ?, description = ?, password_hash = ?, updated_at = ? WHERE name = ?",
                (
                    int(user.disabled if disabled is None else disabled),
                    user.description if description is None else description,
                    user.password_hash if password_hash is None else password_hash,
                    time.time(),
                    name,
                ),
            )
            await bump(tx, AUTH)
        self._identities.drop(name)
        return await self.get_user(name)

    async def delete_user(self, name: str) -> None:
        async with self.db.transaction() as tx:
            if not await tx.fetchone("SELECT 1 FROM auth_users WHERE name = ?", (name,)):
                raise NotFound(f"no user {name!r}")
            await self._keep_an_admin(tx, without_user=name)
            await tx.execute("DELETE FROM auth_users WHERE name = ?", (name,))  # cascades tokens and grants
            await bump(tx, AUTH)
        self._identities.drop(name)
        self._tokens.clear()

    # -- grants -----------------------------------------------------------------
    async def list_grants(
        self, limit: int, after: int | None = None, subject: str | None = None, role: str | None = None
    ) -> list[Grant]:
        sql, params = "SELECT * FROM auth_grants WHERE id > ?", [after or 0]
        if subject is not None:
            sql += " AND subject = ?"
            params.append(subject)
        if role is not None:
            sql += " AND role = ?"
            params.append(role)
        rows = await self.db.fetchall(sql + " ORDER BY id LIMIT ?", (*params, limit))
        return [_grant(r) for r in rows]

    async def grants_of(self, subjects: Sequence[str]) -> dict[str, list[Grant]]:
        """Every grant of each subject, in one query (a page of users)."""
        found: dict[str, list[Grant]] = {s: [] for s in subjects}
        if subjects:
            rows = await self.db.fetchall(
                f"SELECT * FROM auth_grants WHERE subject IN ({', '.join('?' * len(subjects))}) ORDER BY id",
                tuple(subjects))
            for row in rows:
                found[row["subject"]].append(_grant(row))
        return found

    async def get_grant(self, grant_id: int) -> Grant:
        row = await self.db.fetchone("SELECT * FROM auth_grants WHERE id = ?", (grant_id,))
        if row is None:
            raise NotFound(f"no grant {grant_id}")
        return _grant(row)

    async def add_grant(self, subject: str, role: str, pattern: str, created_by: str) -> Grant:
        async with self.db.transaction() as tx:
            if not await tx.fetchone("SELECT 1 FROM auth_users WHERE name = ?", (subject,)):
                raise NotFound(f"no user {subject!r}")
            grant_id = await self._insert_grant(tx, subject, role, pattern, time.time(), created_by)
            await bump(tx, AUTH)
        self._identities.drop(subject)
        return await self.get_grant(grant_id)

    async def remove_grant(self, grant_id: int) -> Grant:
        async with self.db.transaction() as tx:
            row = await tx.fetchone("SELECT * FROM auth_grants WHERE id = ?", (grant_id,))
            if row is None:
                raise NotFound(f"no grant {grant_id}")
            await self._keep_an_admin(tx, without_grant=grant_id)
            await tx.execute("DELETE FROM auth_grants WHERE id = ?", (grant_id,))
            await bump(tx, AUTH)
        grant = _grant(row)
        self._identities.drop(grant.subject)
        return grant

    async def _insert_grant(self, tx: Transaction, subject: str, role: str, pattern: str, now: float,
                            created_by: str) -> int:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {sorted(ROLES)}")
        validate_pattern(pattern)
        if await tx.fetchone(
            "SELECT 1 FROM auth_grants WHERE subject = ? AND role = ? AND pattern = ?", (subject, role, pattern)
        ):
            raise Conflict(f"{subject!r} already holds {role!r} on {pattern!r}")
        row = await tx.fetchone(
            "INSERT INTO auth_grants (subject, role, pattern, created_at, created_by) VALUES (?, ?, ?, ?, ?) RETURNING id",
            (subject, role, pattern, now, created_by),
        )
        return int(row["id"])

    @staticmethod
    async def _keep_an_admin(tx: Transaction, *, without_user: str | None = None, without_grant: int | None = None) -> None:
        """Refuse a change that would leave no enabled account administering everything
        (while there is one: before the first admin exists, anything goes)."""
        admins = await tx.fetchall(
            "SELECT u.name, g.id FROM auth_users u JOIN auth_grants g ON g.subject = u.name "
            "WHERE g.role = 'admin' AND g.pattern = '**' AND u.disabled = 0"
        )
        remaining = [a for a in admins if a["name"] != without_user and a["id"] != without_grant]
        if admins and not remaining:
            raise Conflict("this would leave no enabled admin (role admin on '**'); grant admin to another user first")

    # -- API tokens -------------------------------------------------------------
    async def create_token(self, owner: str, name: str, expires_at: float, created_by: str) -> tuple[ApiTokenRecord, str]:
        """A new API token for ``owner``: its record, and the token itself (shown once, never stored)."""
        new = api_tokens.generate()
        async with self.db.transaction() as tx:
            if not await tx.fetchone("SELECT 1 FROM auth_users WHERE name = ?", (owner,)):
                raise NotFound(f"no user {owner!r}")
            await tx.execute(
                "INSERT INTO auth_tokens (id, owner, name, secret_hash, created_at, created_by, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new.id, owner, name, new.secret_hash, time.time(), created_by, expires_at),
            )
            await bump(tx, AUTH)
        self._tokens.drop(new.id)
        return await self.get_token(new.id), new.token

    async def get_token(self, token_id: str) -> ApiTokenRecord:
        row = await self.db.fetchone("SELECT * FROM auth_tokens WHERE id = ?", (token_id,))
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        return _token(row)

    async def list_tokens(self, limit: int, after: str | None = None, owner: str | None = None) -> list[ApiTokenRecord]:
        sql, params = "SELECT * FROM auth_tokens WHERE id > ?", [after or ""]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        rows = await self.db.fetchall(sql + " ORDER BY id LIMIT ?", (*params, limit))
        return [_token(r) for r in rows]

    async def revoke_token(self, token_id: str) -> ApiTokenRecord:
        """Revoke (idempotent: a revoked token keeps its first revocation time)."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE auth_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), token_id)
            )
            await bump(tx, AUTH)
        self._tokens.drop(token_id)
        return await self.get_token(token_id)  # NotFound when it never existed
