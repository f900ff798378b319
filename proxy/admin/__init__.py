"""``algomint admin …``: the management API from the command line.

Each area is a module with ``register(commands)`` adding its subcommands; every command
receives an ``AdminClient`` and an ``Output``. The server URL and token come from
``--url``/``--token`` or ``ALGOMINT_URL``/``ALGOMINT_TOKEN``."""

from __future__ import annotations

import argparse
import os
from typing import Callable

from .client import AdminClient, AdminError
from .output import Output

__all__ = ["AdminClient", "AdminError", "Output", "add_admin_parser", "AREAS"]

# Area modules, imported lazily so a broken area can't break `algomint serve`.
AREAS: tuple[str, ...] = ("fullbuilds",)
AREAS += ("users", "tokens", "grants", "audit", "bootstrap", "signing_keys")
AREAS += ("chains", "plugins", "assemblies", "subscriptions", "gc")
AREAS += ("catalog",)


def add_admin_parser(commands: argparse._SubParsersAction) -> None:
    import importlib

    admin = commands.add_parser("admin", help="drive the management API")
    _add_common(admin, defaults=True)
    areas = admin.add_subparsers(dest="area", required=True)
    for area in AREAS:
        importlib.import_module(f"{__name__}.{area}").register(areas)
    for leaf in _leaves(admin):
        _add_common(leaf, defaults=False)
    admin.set_defaults(func=run_admin)


def _add_common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The connection and output options, accepted before the area (``admin --json users
    list``) and after the command (``admin users list --json``). On a command they default
    to SUPPRESS, so an option not given there keeps the value given before the area."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--url", default=default(os.environ.get("ALGOMINT_URL", "http://127.0.0.1:5000")),
                        help="server URL (env ALGOMINT_URL)")
    parser.add_argument("--token", default=default(os.environ.get("ALGOMINT_TOKEN")), help="API token (env ALGOMINT_TOKEN)")
    parser.add_argument("--user", default=default(os.environ.get("ALGOMINT_USER")), help="user for Basic auth instead of a token")
    parser.add_argument("--password", default=default(os.environ.get("ALGOMINT_PASSWORD")),
                        help="password for --user (env ALGOMINT_PASSWORD)")
    parser.add_argument("--json", action="store_true", default=default(False), help="print raw JSON instead of tables")


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The command parsers under ``parser``: those without subcommands of their own."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases repeat a parser
                found.extend(_leaves(child) if any(isinstance(a, argparse._SubParsersAction) for a in child._actions)
                             else [child])
    return found


def run_admin(args: argparse.Namespace) -> int:
    client = AdminClient(args.url, token=args.token, user=args.user, password=args.password)
    out = Output(json_mode=args.json)
    handler: Callable[[argparse.Namespace, AdminClient, Output], int | None] = args.admin_func
    try:
        return handler(args, client, out) or 0
    except AdminError as exc:
        out.error(exc)
        return 1
