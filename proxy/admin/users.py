"""``algomint admin users …`` and ``algomint admin whoami``: accounts from the shell.

Passwords are never taken as arguments (they would show in ``ps`` and shell history):
they are prompted for on a terminal, and read as one line from standard input when it is
not a terminal (``echo pw | algomint admin users create alice``) or with ``--password-stdin``."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from .client import AdminClient, AdminError
from .output import Output

__all__ = ["register", "read_password"]

_COLUMNS = ["name", "kind", "disabled", "roles", "created_at", "description"]


def _stdin_line(what: str) -> str:
    line = sys.stdin.readline()
    if not line:
        raise AdminError(0, "no-password", f"no {what} on standard input")
    return line.rstrip("\r\n")


def _piped(args: argparse.Namespace) -> bool:
    """Read passwords from stdin: asked to, or stdin is not a terminal (``echo pw | …``)."""
    return bool(args.password_stdin) or not sys.stdin.isatty()


def _ask(prompt: str) -> str:
    """A password typed on the terminal; end of input (Ctrl-D) is an answer, not a crash."""
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise AdminError(0, "no-password", "no password entered") from None


def read_password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    if _piped(args):
        return _stdin_line("password")
    first = _ask(prompt)
    if _ask("Again: ") != first:
        raise AdminError(0, "mismatch", "the two passwords differ")
    return first


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("users", help="users and robots")
    commands = area.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="all users and robots")
    listing.set_defaults(admin_func=_list)

    show = commands.add_parser("show", help="one account with its grants")
    show.add_argument("name")
    show.set_defaults(admin_func=_show)

    create = commands.add_parser("create", help="create a user (asks for a password) or a robot")
    create.add_argument("name")
    create.add_argument("--robot", action="store_true", help="a robot: no password, use API tokens")
    create.add_argument("--role", action="append", default=[], dest="roles",
                        help="grant a role on its default patterns (repeatable; see `grants roles`)")
    create.add_argument("--description", default="")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input (the default when it is not a terminal)")
    create.set_defaults(admin_func=_create)

    for verb, disabled in (("disable", True), ("enable", False)):
        cmd = commands.add_parser(verb, help=f"{verb} an account (takes effect on its next request)")
        cmd.add_argument("name")
        cmd.set_defaults(admin_func=_set_disabled(disabled))

    delete = commands.add_parser("delete", help="delete an account with its tokens and grants")
    delete.add_argument("name")
    delete.set_defaults(admin_func=_delete)

    passwd = commands.add_parser("passwd", help="set a password (your own asks for the current one)")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the new password (and, for your own, first the current one) from stdin")
    passwd.set_defaults(admin_func=_passwd)

    whoami = areas.add_parser("whoami", help="who the server thinks you are")
    whoami.set_defaults(admin_func=_whoami)


def _row(user: dict[str, Any]) -> dict[str, Any]:
    roles = sorted({f"{g['role']}:{g['pattern']}" for g in user.get("grants", [])})
    return {**user, "roles": ", ".join(roles)}


def _list(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    out.table([_row(u) for u in client.paginate("/users")], _COLUMNS)


def _show(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    out.item(client.get(f"/users/{args.name}"))


def _create(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    body: dict[str, Any] = {"name": args.name, "kind": "robot" if args.robot else "user", "roles": args.roles,
                            "description": args.description}
    if not args.robot:
        body["password"] = read_password(args)
    out.item(_row(client.post("/users", body)))


def _set_disabled(disabled: bool):
    def run(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
        out.item(_row(client.patch(f"/users/{args.name}", {"disabled": disabled})))

    return run


def _delete(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    client.delete(f"/users/{args.name}")
    out.message(f"deleted {args.name}")


def _passwd(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    me = client.get("/whoami")["name"]
    body: dict[str, Any] = {}
    if me == args.name:
        body["current_password"] = (_stdin_line("current password") if _piped(args)
                                    else _ask("Current password: "))
    body["password"] = read_password(args, "New password: ")
    client.put(f"/users/{args.name}/password", body)
    out.message(f"password of {args.name} changed")


def _whoami(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    out.item(_row(client.get("/whoami")))
