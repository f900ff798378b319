"""``algomint admin plugins list|show|push``: plugin artifacts in the plugins namespace."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

from .chains import parse_pairs
from .client import AdminClient, AdminError
from .output import Output

__all__ = ["register"]


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("plugins", help="business plugins (plugins/<name>:<version>)")
    commands = area.add_subparsers(dest="command", required=True)

    commands.add_parser("list", help="plugin repositories and their tags").set_defaults(admin_func=_list)

    show = commands.add_parser("show", help="a plugin's versions: digest, kind, options, files")
    show.add_argument("name", help="name without the plugins/ prefix")
    show.set_defaults(admin_func=_show)

    push = commands.add_parser("push", help="push a plugin artifact")
    push.add_argument("name")
    push.add_argument("version")
    push.add_argument("--kind", required=True, choices=["file", "service", "job", "function"])
    push.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="kind option (VALUE parsed as JSON when it is JSON), e.g. url=http://…")
    push.add_argument("--file", action="append", default=[], metavar="PATH[=TITLE]",
                      help="a file the artifact carries, named TITLE (default: its file name)")
    push.set_defaults(admin_func=_push)


def _list(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.table(list(client.paginate("/plugins")), ["repository", "tags"])
    return 0


def _show(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    body = client.get(f"/plugins/{args.name}")
    if out.json_mode:
        out.json(body)
        return 0
    rows = [{"tag": v["tag"], "digest": v.get("digest"), "kind": (v.get("config") or {}).get("kind"),
             "files": [f["path"] for f in v.get("files", [])], "error": v.get("error")} for v in body["versions"]]
    out.table(rows, ["tag", "kind", "digest", "files", "error"])
    return 0


def _push(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    files = []
    for spec in args.file:
        path, _, title = spec.partition("=")
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise AdminError(0, "usage", f"--file {path}: {exc.strerror}") from None
        files.append({"path": title or Path(path).name, "data": base64.b64encode(data).decode()})
    body = {"name": args.name, "version": args.version, "kind": args.kind,
            "options": parse_pairs(args.option, "--option"), "files": files}
    out.item(client.post("/plugins", body))
    return 0
