"""``algomint admin grants …``: roles on repository patterns."""

from __future__ import annotations

import argparse

from .client import AdminClient
from .output import Output

__all__ = ["register"]

_COLUMNS = ["id", "subject", "role", "pattern", "created_at", "created_by"]


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("grants", help="roles granted on repository patterns")
    commands = area.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="grants, optionally of one user or role")
    listing.add_argument("--subject")
    listing.add_argument("--role")
    listing.set_defaults(admin_func=_list)

    add = commands.add_parser("add", help="grant ROLE on PATTERN to SUBJECT (e.g. cons consumer 'business/door/**')")
    add.add_argument("subject")
    add.add_argument("role")
    add.add_argument("pattern", help="`*` within one path segment, `**` any depth")
    add.set_defaults(admin_func=_add)

    remove = commands.add_parser("remove", help="remove a grant by id")
    remove.add_argument("id", type=int)
    remove.set_defaults(admin_func=_remove)

    roles = commands.add_parser("roles", help="the roles, their actions and default patterns")
    roles.set_defaults(admin_func=_roles)


def _list(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    out.table(list(client.paginate("/grants", subject=args.subject, role=args.role)), _COLUMNS)


def _add(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    out.item(client.post("/grants", {"subject": args.subject, "role": args.role, "pattern": args.pattern}))


def _remove(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    client.delete(f"/grants/{args.id}")
    out.message(f"removed grant {args.id}")


def _roles(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    out.table(client.get("/roles"), ["name", "actions", "defaults", "description"])
