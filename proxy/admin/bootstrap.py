"""``algomint admin bootstrap``: the first admin and a one-time API token, offline.

Runs against the metadata database named in the config (no server or token needed,
since none exists yet). Creates user ``admin`` with role ``admin`` on ``**`` when there
are no users (with the password from ``ALGOMINT_ADMIN_PASSWORD`` or ``[auth]
admin_password_file`` if one is set, else token-only), then prints an API token for it.
With users already present it refuses, unless ``--force``: then it issues another
admin token (recovery for whoever holds the database)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from ..api.manage.times import iso
from .client import AdminClient, AdminError
from .output import Output

__all__ = ["register"]


def register(areas: argparse._SubParsersAction) -> None:
    cmd = areas.add_parser("bootstrap", help="create the first admin and print a one-time API token (offline)")
    cmd.add_argument("--config", type=Path, help="TOML config file (default: config/algomint.toml if present)")
    cmd.add_argument("--force", action="store_true", help="users exist: issue another token for admin anyway")
    cmd.set_defaults(admin_func=_bootstrap)


def _bootstrap(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    from ..auth.passwords import hash_password
    from ..auth.setup import ADMIN, admin_password, new_store
    from ..auth.store import SCHEMA
    from ..cluster import versions
    from ..service.policy import Action
    from ..cli import load_cli_config
    from ..config import ConfigError
    from ..meta import create_database

    config = load_cli_config(args.config)
    if config is None:
        return 2
    try:
        password = admin_password(config)
    except ConfigError as exc:
        raise AdminError(0, "config", str(exc)) from None

    async def run() -> dict[str, Any]:
        db = create_database(config.metadata)
        await db.open()
        try:
            await db.migrate("auth", SCHEMA)
            await versions.migrate(db)  # account changes bump the shared auth version
            store = new_store(config, db)
            if await store.count_users() == 0:
                await store.create_user(ADMIN, kind="user", password_hash=hash_password(password) if password else None,
                                        roles=["admin"], description="first administrator", created_by="bootstrap")
            elif not args.force:
                raise AdminError(0, "bootstrapped", "users exist already; use --force to issue another admin token")
            identity = await store.identity(ADMIN)
            if identity is None or not identity.permissions.registry_wide(Action.MANAGE):
                raise AdminError(0, "no-admin", f"user {ADMIN!r} does not exist or is not an admin on '**'")
            record, token = await store.create_token(ADMIN, "bootstrap", time.time() + config.auth.api_token_ttl,
                                                     created_by="bootstrap")
            return {"user": ADMIN, "token": token, "id": record.id, "expires_at": iso(record.expires_at)}
        finally:
            await db.close()

    result = asyncio.run(run())
    if out.json_mode:
        out.json(result)
    else:
        print(result["token"])
        print(f"API token {result['id']} for {ADMIN!r}; store it now, it is not shown again. "
              "Use it with ALGOMINT_TOKEN or --token.", file=sys.stderr)
    return 0
