"""Wiring authentication into the app, and the first admin.

No default password exists anywhere. With ``[auth] enabled = true`` and no users, the
first admin (user ``admin``) takes its password from ``ALGOMINT_ADMIN_PASSWORD`` or the
file named by ``[auth] admin_password_file``; without either the server starts with no
users and ``algomint admin bootstrap`` (run against the same metadata database) creates
the admin and prints a one-time API token."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import AsyncIterator, Mapping

from aiohttp import web

from ..api.state import CONFIG, DATABASE, POLICY, VERSIONS
from ..cluster.versions import AUTH as AUTH_VERSION, migrate as migrate_versions
from ..config import Config, ConfigError
from ..meta import Database
from .authenticator import Authenticator
from .envsecret import take_env_secret
from .passwords import hash_password
from .permissions import PermissionPolicy
from .ratelimit import LoginThrottle, migrate as migrate_throttle
from .keyring import KeyRing
from .registry_token import TokenSigner
from .state import AUTH, AUTH_STORE, SIGNER
from .store import SCHEMA, AuthStore, Conflict
from .token_endpoint import add_token_routes

__all__ = ["setup_auth", "new_store", "bootstrap_admin", "admin_password", "signing_keys_dir", "ADMIN", "PASSWORD_ENV"]

log = logging.getLogger(__name__)

ADMIN = "admin"
PASSWORD_ENV = "ALGOMINT_ADMIN_PASSWORD"


def signing_keys_dir(config: Config) -> Path:
    return config.auth.signing_keys_dir or config.metadata.path.parent / "auth-keys"


def new_store(config: Config, db: Database) -> AuthStore:
    return AuthStore(db, cache_ttl=config.auth.cache_ttl, anonymous_pull=config.auth.anonymous_pull,
                     system_namespaces=config.auth.system_namespaces)


def setup_auth(app: web.Application) -> None:
    """Users and grants always (they can be prepared before auth is switched on); with
    ``[auth] enabled``, also the authenticator, the permission policy and ``/token``."""
    config = app[CONFIG]
    app[AUTH_STORE] = store = new_store(config, app[DATABASE])
    # Revocations, disabled users, grant and password changes made on any replica.
    app[VERSIONS].on_change(AUTH_VERSION, store.invalidate)
    if config.auth.enabled:
        try:
            keys = KeyRing.open(signing_keys_dir(config))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"auth.signing_keys_dir: {exc}") from None
        app[SIGNER] = signer = TokenSigner(keys, config.auth.service)
        throttle = LoginThrottle(app[DATABASE], config.auth.free_failures, config.auth.failure_delay,
                                 config.auth.max_failure_delay, config.auth.failure_window)
        app[AUTH] = Authenticator(store, signer, throttle, config.auth.password_checks)
        app[POLICY].add(PermissionPolicy(store))
        add_token_routes(app)

    # Read and checked now, so a bad secret stops start-up before anything is opened.
    if config.auth.enabled:
        password = admin_password(config)
    else:
        take_env_secret(PASSWORD_ENV)  # unused without auth, but never left behind for others to find
        password = None

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await store.db.migrate("auth", SCHEMA)
        await migrate_versions(store.db)  # every change is announced to other replicas there
        await migrate_throttle(store.db)
        if config.auth.enabled:
            await bootstrap_admin(store, password)
        yield

    app.cleanup_ctx.append(lifetime)


def admin_password(config: Config, environ: Mapping[str, str] | None = None) -> str | None:
    """The first admin's password from the environment or the configured secret file.

    Read from the process environment, the variable is erased from it (``take_env_secret``)."""
    password = take_env_secret(PASSWORD_ENV) if environ is None else environ.get(PASSWORD_ENV)
    path = config.auth.admin_password_file
    if not password and path is not None:
        try:
            password = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"auth.admin_password_file: cannot read {path}: {exc.strerror}") from None
    if password and len(password) < config.auth.password_min_length:
        raise ConfigError(f"the admin password must have at least {config.auth.password_min_length} characters")
    return password or None


async def bootstrap_admin(store: AuthStore, password: str | None) -> bool:
    """Create ``admin`` when there are no users and a password is provided; True if created."""
    if await store.count_users():
        return False
    if password is None:
        log.warning("authentication is on but no users exist: set %s or [auth] admin_password_file, "
                    "or run `algomint admin bootstrap`", PASSWORD_ENV)
        return False
    try:
        password_hash = await asyncio.to_thread(hash_password, password)
        await store.create_user(ADMIN, kind="user", password_hash=password_hash, roles=["admin"],
                                description="first administrator", created_by="bootstrap")
    except Conflict:
        return False  # another replica got there first
    log.info("created the first admin user", extra={"user": ADMIN})
    return True
