"""``algomint admin chains …``: business systems (plugin chains), reloads, re-assembly."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .client import AdminClient, AdminError
from .output import Output

__all__ = ["register"]

_COLUMNS = ["name", "source", "owner", "match", "plugins", "params"]


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("chains", help="chains of business plugins (business systems)")
    commands = area.add_subparsers(dest="command", required=True)

    commands.add_parser("list", help="chains in force, file chains first").set_defaults(admin_func=_list)

    show = commands.add_parser("show", help="one chain")
    show.add_argument("name")
    show.set_defaults(admin_func=_show)

    for verb, help_ in (("create", "create a chain (its plugins must exist)"), ("update", "replace an API chain")):
        cmd = commands.add_parser(verb, help=help_)
        cmd.add_argument("name")
        cmd.add_argument("--match", action="append", required=True, metavar="GLOB", help="repository glob (repeat)")
        cmd.add_argument("--plugin", action="append", required=True, metavar="REF",
                         help="plugins/<name>:<version> or @sha256:… (repeat, in order)")
        cmd.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                         help="chain parameter (VALUE parsed as JSON when it is JSON)")
        cmd.add_argument("--platform", action="append", default=[], metavar="OS/ARCH",
                         help="only packages whose descriptor platform this selects, e.g. linux/arm64 (repeat)")
        cmd.set_defaults(admin_func=_create if verb == "create" else _update)

    delete = commands.add_parser("delete", help="delete an API chain")
    delete.add_argument("name")
    delete.set_defaults(admin_func=_delete)

    commands.add_parser("reload", help="re-read the chains file").set_defaults(admin_func=_reload)

    assemble = commands.add_parser("assemble", help="re-run a chain for chosen or all matching packages")
    assemble.add_argument("name")
    assemble.add_argument("--package", action="append", metavar="REPO:TAG", help="a package (repeat); default: all")
    assemble.set_defaults(admin_func=_assemble)


def parse_pairs(pairs: list[str], what: str) -> dict[str, Any]:
    """``KEY=VALUE`` options; a VALUE that is JSON is decoded (numbers, lists, objects)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AdminError(0, "usage", f"{what} must be KEY=VALUE: {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _rows(chains: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows: the owner (whose rights a chain reads with) by name, "algomint" for file chains."""
    return [{**c, "owner": (c.get("owner") or {}).get("name")} for c in chains]


def _list(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    body = client.get("/chains")
    if out.json_mode:
        out.json(body)
        return 0
    out.table(_rows(body["items"]), _COLUMNS)
    status = body["file"]  # null unless the caller is an admin
    if status and status["file"]:
        out.message(f"\nchains file {status['file']}: {status['chains']} chain(s)"
                    + (f"; REJECTED: {status['error']}" if status["error"] else ""))
    return 0


def _show(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.item(client.get(f"/chains/{args.name}"))
    return 0


def _body(args: argparse.Namespace) -> dict[str, Any]:
    return {"match": args.match, "plugins": args.plugin, "params": parse_pairs(args.param, "--param"),
            "platforms": args.platform}


def _create(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.item(client.post("/chains", {"name": args.name, **_body(args)}))
    return 0


def _update(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.item(client.put(f"/chains/{args.name}", _body(args)))
    return 0


def _delete(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    client.delete(f"/chains/{args.name}")
    out.message(f"deleted chain {args.name}")
    return 0


def _reload(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    body = client.post("/chains/reload")
    if out.json_mode:
        out.json(body)
    else:
        out.table(_rows(body["items"]), _COLUMNS)
    return 0


def _assemble(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    body = client.post(f"/chains/{args.name}/assemble", {"packages": args.package} if args.package else {})
    if out.json_mode:
        out.json(body)
    else:
        out.message(f"queued {len(body['jobs'])} job(s) for chain {args.name}: {', '.join(map(str, body['jobs']))}")
    return 0
