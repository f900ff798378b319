"""``algomint admin signing-keys``: list and rotate the registry-token signing keys, offline.

Works on ``[auth] signing_keys_dir`` directly (like ``bootstrap``): run it where the
directory is (every replica shares it). ``rotate`` adds a key that signs from now (or
after ``--activate-in`` seconds, so verifiers outside algomint can fetch it first) and
removes keys that stopped signing longer ago than any token they signed can live.
Running servers pick the change up within seconds; nothing restarts."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .client import AdminClient, AdminError
from .output import Output

__all__ = ["register"]


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("signing-keys", help="registry-token signing keys (offline, on the keys directory)")
    commands = area.add_subparsers(dest="action", required=True)
    for name, help_text, func in (("list", "the keys, which one signs, where the certificates are", _list),
                                  ("rotate", "add a new signing key; drop keys no token can still need", _rotate)):
        cmd = commands.add_parser(name, help=help_text)
        cmd.add_argument("--config", type=Path, help="TOML config file (default: config/algomint.toml if present)")
        if name == "rotate":
            cmd.add_argument("--activate-in", type=float, default=0.0, metavar="SECONDS",
                             help="publish now, sign from this many seconds on (default: at once)")
        cmd.set_defaults(admin_func=func)


def _directory(args: argparse.Namespace):
    from ..auth.setup import signing_keys_dir
    from ..cli import load_cli_config

    config = load_cli_config(args.config)
    if config is None:
        raise AdminError(0, "config", "no usable configuration")
    return config, signing_keys_dir(config)


def _rows(directory: Path) -> list[dict]:
    from ..auth.keyring import KeyRing

    ring = KeyRing.open(directory)
    signer = ring.signer()
    return [{"kid": k.kid, "active_from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(k.active_from)),
             "signing": k.kid == signer.kid, "file": str(k.path)} for k in ring.keys()]


def _list(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    _, directory = _directory(args)
    rows = _rows(directory)
    if out.json_mode:
        out.json({"directory": str(directory), "keys": rows})
    else:
        for row in rows:
            print(f"{row['kid']}  from {row['active_from']}{'  (signing)' if row['signing'] else ''}")
    return 0


def _rotate(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    from ..auth.keyring import BUNDLE, rotate

    config, directory = _directory(args)
    if args.activate_in < 0:
        raise AdminError(0, "usage", "--activate-in must not be negative")
    # A retired key verifies until every token it signed has expired (refresh tokens live longest).
    keep = max(config.auth.token_ttl, config.auth.refresh_token_ttl) + 60
    new, removed = rotate(directory, activate_in=args.activate_in, keep_retired=keep)
    result = {"kid": new.kid, "active_from": new.active_from, "removed": removed,
              "bundle": str(directory / BUNDLE), "keys": _rows(directory)}
    if out.json_mode:
        out.json(result)
    else:
        print(f"new signing key {new.kid}, signing from "
              f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(new.active_from))}")
        for kid in removed:
            print(f"removed retired key {kid}")
        print(f"certificates for a backing registry's rootcertbundle: {directory / BUNDLE}")
    return 0
