"""``algomint admin tokens …``: API tokens (yours, or anyone's as admin)."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from .client import AdminClient
from .output import Output

__all__ = ["register", "parse_duration"]

_COLUMNS = ["id", "owner", "name", "state", "expires_at", "last_used_at", "created_by"]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``3600``, ``90m``, ``12h`` or ``30d`` in seconds."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 90m, 12h, 30d)")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("tokens", help="API tokens")
    commands = area.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="your tokens (admins: everyone's)")
    listing.add_argument("--owner", help="only this owner's tokens")
    listing.set_defaults(admin_func=_list)

    create = commands.add_parser("create", help="create a token; its secret is printed once")
    create.add_argument("name", help="what the token is for")
    create.add_argument("--owner", help="another user or robot (admins only)")
    create.add_argument("--expires-in", type=parse_duration, help="lifetime: 3600, 90m, 12h, 30d")
    create.set_defaults(admin_func=_create)

    show = commands.add_parser("show", help="one token (never its secret)")
    show.add_argument("id")
    show.set_defaults(admin_func=_show)

    revoke = commands.add_parser("revoke", help="revoke a token: it stops working at once")
    revoke.add_argument("id")
    revoke.set_defaults(admin_func=_revoke)


def _list(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    out.table(list(client.paginate("/tokens", owner=args.owner)), _COLUMNS)


def _create(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    body: dict[str, Any] = {"name": args.name}
    if args.owner:
        body["owner"] = args.owner
    if args.expires_in:
        body["expires_in"] = args.expires_in
    created = client.post("/tokens", body)
    out.item(created)
    if not out.json_mode:
        print("Store the token now: it is not shown again.", file=sys.stderr)


def _show(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    out.item(client.get(f"/tokens/{args.id}"))


def _revoke(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    client.delete(f"/tokens/{args.id}")
    out.message(f"revoked {args.id}")
